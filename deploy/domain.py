"""The small rules several stages share: what a SHA, a tag, a tenant name and an image are.

Each rule lives here once, so that config (which validates inputs) and the stages (which meet
the same values from servers) can never disagree: an image reference, for instance, is parsed
once into an :class:`ImageRef`, and whether it is spoken to over plain http is decided here only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

SHA_RE = re.compile(r"^[0-9a-fA-F]{7,64}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
# A tenant name is a DNS-label-like word: it becomes a host name or a path segment of verify-url,
# so `.`, `..`, `/`, markup and spaces can never be one.
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}\Z")  # \Z: `$` would let "b\n" through
MIN_PREFIX = 7  # `git rev-parse --short`'s length: shorter prefixes prove nothing
SHOWN_VALUE = 80  # characters of a bad value quoted in its error

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
KILL_WORDS = TRUE_WORDS | {"disabled", "disable"}
LIVE_WORDS = FALSE_WORDS | {"enabled", ""}

# Registries whose API is not served on the host people write in image names.
API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


UNWRITABLE_RE = re.compile("[\ud800-\udfff]")  # surrogates: no UTF-8 encoder writes one, paired or not
REPLACEMENT = "\ufffd"


def writable(text: str) -> str:
    """``text`` with every code point UTF-8 cannot encode replaced by U+FFFD.

    Those are the surrogates (U+D800–U+DFFF), and only they: every other code point has a UTF-8
    form. A server puts them in a string with a JSON escape (``"\\ud800"``), and Python decodes a
    non-UTF-8 byte of the environment into one (``\\udc80``–``\\udcff``); written, the first raises
    ``UnicodeEncodeError`` and the second comes out as a raw byte, or raises. U+FFFD is what a
    UTF-8 decoder shows for a byte it cannot read, so the reader sees the same mark for the same
    kind of damage, and the rest of the server's words survive. Text that is pure ASCII, which is
    nearly all of it, is returned as it is after one cheap check.
    """
    return text if text.isascii() else UNWRITABLE_RE.sub(REPLACEMENT, text)


HEX_RE = re.compile(r"[0-9a-f]+\Z")


def sha_matches(reported: str, sha: str) -> bool:
    """Both hex, and equal or one a prefix of the other of at least :data:`MIN_PREFIX` characters; any case.

    ``<sha>-dirty`` or ``<sha>+local`` is another build (a working tree with changes), not this one:
    only a commit SHA, whole or shortened, names the build.
    """
    reported, sha = reported.strip().lower(), sha.strip().lower()
    if not HEX_RE.match(reported) or not HEX_RE.match(sha):
        return False
    if reported == sha:
        return True
    shorter, longer = sorted((reported, sha), key=len)
    return len(shorter) >= MIN_PREFIX and longer.startswith(shorter)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_kill_switch(value: str) -> bool:
    """True means "skip everything". An unknown word must neither deploy nor freeze silently."""
    word = value.strip().lower()
    if word in KILL_WORDS:
        return True
    if word in LIVE_WORDS:
        return False
    raise ValueError("expected one of 1/true/yes/on/disabled/disable (skip) or 0/false/no/off/enabled/empty (run)")


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """One image repository of ``promote-images``, parsed once: how it is named, and where its API is.

    HTTPS unless the entry says ``http://`` or names a loopback host without a scheme (a local
    registry): one explicit image, never every registry because of a CP-wide flag.
    """

    written: str  # as the user wrote it: how the image is named in the log and the report
    host: str  # host[:port]
    repository: str  # the path after the host: acme/app
    secure: bool

    @property
    def base_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{API_HOSTS.get(self.host, self.host)}"

    def __str__(self) -> str:
        return self.written


# A digest suffix as OCI writes it (`@algorithm:hex`): after the repository, so it has no '/', which
# is how it differs from credentials (`user:pass@host/...`, the '@' before the path). At least 16 hex:
# `user:pass@registry:5000` (credentials, no repository) must not read as the digest `registry:5000`.
DIGEST_SUFFIX_RE = re.compile(r"@([a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{16,})\Z")
SHOWN_DIGEST = 19  # `sha256:` and 12 hex: enough to recognise a digest in an error


def parse_image(value: str, allow_insecure: bool) -> ImageRef:
    """``[http[s]://]host[:port]/repository``, or :class:`ValueError` saying what is wrong."""
    _reject_digest(value)
    shown = repr(display_url(value)[:SHOWN_VALUE])
    if "@" in value or "#" in value or "?" in value:
        raise ValueError(f"{shown}: must be host[:port]/repository, without credentials (use registry-username and "
                         "registry-password)")
    scheme, has_scheme, rest = value.partition("://")
    if not has_scheme:
        scheme, rest = "", value
    host, _, repository = rest.partition("/")
    if scheme not in ("", "http", "https"):
        raise ValueError(f"{shown}: only http:// or https:// (or no scheme: https)")
    if not repository or not ("." in host or ":" in host or host == "localhost"):
        raise ValueError(f"{shown}: expected host[:port]/repository, e.g. ghcr.io/acme/app")
    if ":" in repository:
        tag = repository.rpartition(":")[2]
        raise ValueError(f"{shown}: remove the tag ':{tag[:40]}' — promote-images names repositories only (the tag "
                         "that moves is promote-tag; the build it moves to is target-tag, or promote-source)")
    if not REPOSITORY_RE.match(repository):
        raise ValueError(f"{shown}: repository must be lowercase path components")
    hostname = urlsplit("//" + host).hostname or host
    if scheme == "http" and not allow_insecure and not is_loopback(hostname):
        raise ValueError(f"{shown}: plain http:// to a registry needs allow-insecure-http: true")
    secure = scheme == "https" or (not scheme and not is_loopback(hostname))
    return ImageRef(written=value, host=host, repository=repository, secure=secure)


def _reject_digest(value: str) -> None:
    """A pinned reference (``ghcr.io/acme/app@sha256:…``) is told to drop its digest.

    Checked before the credentials rule, which an '@' would otherwise trip: that error sends the
    user to registry-username for a value that holds no credential. A digest is a build, and the
    build to promote is promote-source's, so the error says where it goes. Only the digest is
    quoted: what precedes the last '@' may be userinfo (a password with an unencoded '/'), and
    telling it from a repository is guesswork an error must not show a secret on.
    """
    found = DIGEST_SUFFIX_RE.search(value)
    if not found:
        return
    digest = found.group(1)
    shown = digest if len(digest) <= SHOWN_DIGEST else digest[:SHOWN_DIGEST] + "…"
    raise ValueError(f"remove the digest '@{shown}' — promote-images names repositories only; to promote a digest, "
                     "use promote-source")


def display_url(value: str) -> str:
    """A URL as it may be shown in an error or the log: userinfo reduced to the host, and the
    query (and fragment) replaced by ``…`` — either may carry a credential (``?key=``)."""
    scheme, _, host, path, hidden = url_parts(value)
    return f"{scheme}{host}{path}" + (f"{hidden[0]}…" if hidden else "")


def url_parts(value: str) -> tuple[str, str, str, str, str]:
    """``(scheme://, userinfo, host, /path, ?query#fragment)`` by plain string surgery rather than
    a URL parser, so that even a value no parser accepts (exactly when it is shown in an error)
    is split the same way for display and for finding its credentials."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    # Userinfo runs to the *last* '@' anywhere: a password with an unencoded '/', '?' or '#' must
    # not be mistaken for a path or a query and shown. (An '@' in a query over-hides; that is safe.)
    userinfo, _, rest = rest.rpartition("@")
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
    rest, hidden = rest[:cut], rest[cut:]
    slash = rest.find("/")
    host, path = (rest, "") if slash == -1 else (rest[:slash], rest[slash:])
    return scheme + sep, userinfo, host, path, hidden
