"""Python's HTTP client libraries: one request, and what the application gets back.

    python python_client.py requests|httpx|aiohttp GET URL
    python python_client.py requests|httpx|aiohttp POST URL BYTES

Prints "HTTP <status>" for a response, or the exception as a traceback's last line shows
it (module.Class: message) and, where an OSError inside it carries one, "errno: <number>";
exits 1 then. Each library with its defaults (certificates checked too).
"""

import asyncio
import sys


def with_requests(method, url, body):
    import requests

    return requests.request(method, url, data=body).status_code


def with_httpx(method, url, body):
    import httpx

    return httpx.request(method, url, content=body).status_code


def with_aiohttp(method, url, body):
    import aiohttp

    async def fetch():
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, data=body) as response:
                await response.read()
                return response.status

    return asyncio.run(fetch())


def errno_in(exc):
    """The first errno along the exception's causes and contexts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        for inner in exc.args:  # urllib3 and requests keep their cause in args too
            if isinstance(inner, BaseException):
                found = errno_in(inner)
                if found:
                    return found
        exc = exc.__cause__ or exc.__context__
    return None


def main():
    library, method, url = sys.argv[1:4]
    body = b"x" * int(sys.argv[4]) if method == "POST" else None
    try:
        status = {"requests": with_requests, "httpx": with_httpx, "aiohttp": with_aiohttp}[library](method, url, body)
    except Exception as exc:
        kind = type(exc)
        module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
        print(f"{module}{kind.__qualname__}: {exc}" if str(exc) else f"{module}{kind.__qualname__}")
        number = errno_in(exc)
        if number:
            print(f"errno: {number}")
        return 1
    print(f"HTTP {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
