"""Fetching a dataset's files over http(s): nothing else is fetched, bodies are size-capped, transient
failures are retried with backoff, checksums are verified, and a file already cached is not fetched again.
`check_url` is the rule for a dataset address, applied by the controller before launch to every URL a plan
names (runner/plandata.py): http(s) only, and no private or local target unless the plan allows it - and
here to every address fetched and every redirect followed (a manifest's media are known only here; a
public address may redirect to the metadata service), under the job's `allow_private_urls` (`policy`)."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .sample import DatasetError

MAX_DOWNLOAD_BYTES = 512 * 2**20  # the COCO annotations zip is 241 MB; nothing we fetch is larger
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_ALLOW_PRIVATE = [False]  # this worker's job says whether private hosts may be fetched from (`policy`)


def policy(allow_private_urls: bool) -> None:
    """The job's rule for every download of this process (set where its datasets are resolved)."""
    _ALLOW_PRIVATE[0] = bool(allow_private_urls)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is followed only to an address the rule takes (urllib's own follows ftp:// and any host)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, _ALLOW_PRIVATE[0])
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_CheckedRedirects)


def check_url(url: str, allow_private: bool = False) -> None:
    """Refuse a dataset address that is not http(s), or (unless `allow_private`) whose host is loopback,
    link-local (the cloud's metadata service), private, unspecified or another non-public address, or a
    local name. The host is judged as written - no DNS lookup - in every notation the socket layer
    would take as an address (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as e:  # a malformed [IPv6] or port
        raise DatasetError(f"{url}: not a valid address ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise DatasetError(f"{url}: only http(s) addresses are fetched")
    if not host:
        raise DatasetError(f"{url}: no host")
    if allow_private:
        return
    name = host.rstrip(".").lower()
    addr = _address(name)
    if name in LOCAL_NAMES or name.endswith(".localhost") or (addr is not None and _private(addr)):
        raise DatasetError(f"{url}: {host} is a private or local address (the plan does not set "
                           "allow_private_urls: true)")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address if it is written as one in any notation getaddrinfo accepts, else None."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:  # the classic forms: decimal, octal, hex, fewer than four parts
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError, UnicodeError):
        return None


def _private(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not a public unicast address: loopback, link-local, private (10/8, 172.16/12, 192.168/16, fc00::/7),
    unspecified, shared, reserved, multicast - or an IPv6 form of one of those IPv4 addresses."""
    inner = getattr(addr, "ipv4_mapped", None) or getattr(addr, "sixtofour", None)
    return (inner is not None and _private(inner)) or addr.is_multicast or not addr.is_global


def download(url: str, dest: Path, sha256: str = "", attempts: int = 4, backoff_s: float = 1.0,
             max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Fetch `url` to `dest` (kept if already there with the right checksum). Only http(s); a body past
    `max_bytes` is refused. Retries connection errors, timeouts, 429 and 5xx with exponential backoff; a
    checksum mismatch is retried once as a corrupt transfer, then fails."""
    check_url(url, _ALLOW_PRIVATE[0])
    dest = Path(dest)
    if dest.exists() and (not sha256 or file_sha256(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    mismatches = 0
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            with _OPENER.open(url, timeout=60) as resp, open(tmp, "wb") as out:
                if int(resp.headers.get("Content-Length") or 0) > max_bytes:
                    raise DatasetError(f"cannot download {url}: {resp.headers['Content-Length']} bytes is over the "
                                       f"{max_bytes >> 20} MiB cap")
                got = 0
                while block := resp.read(1 << 20):
                    got += len(block)
                    if got > max_bytes:
                        raise DatasetError(f"cannot download {url}: over the {max_bytes >> 20} MiB cap")
                    out.write(block)
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
            if e.code != 429 and e.code < 500:
                break
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = str(getattr(e, "reason", e))
            continue
        except DatasetError:
            tmp.unlink(missing_ok=True)
            raise
        if sha256 and file_sha256(tmp) != sha256.lower():
            mismatches += 1
            last = f"sha256 {file_sha256(tmp)[:12]}... is not the expected {sha256[:12]}..."
            if mismatches > 1:
                break
            continue
        tmp.replace(dest)
        return dest
    tmp.unlink(missing_ok=True)
    raise DatasetError(f"cannot download {url}: {last}")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_name(url: str) -> str:
    suffix = Path(urllib.parse.urlparse(url).path).suffix[:8]
    return hashlib.sha256(url.encode()).hexdigest()[:24] + suffix
