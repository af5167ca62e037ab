"""Python's HTTP client libraries: one request, and what the application gets back.

    python python_client.py requests|httpx|aiohttp GET URL         [--then URL2]
    python python_client.py requests|httpx|aiohttp POST URL BYTES  [--then URL2]

Prints "HTTP <status>" for a response, or the exception as a traceback's last line shows
it (module.Class: message) and, where an OSError inside it carries one, "errno: <number>";
exits 1 then. Each library with its defaults (certificates checked too). --then URL2: once
standard input is closed, the same request to URL2 with the same client (requests.Session, httpx.Client, aiohttp.ClientSession:
their pools of kept-alive connections); the first's result is printed as
"first request: HTTP <status>".
"""

import asyncio
import sys


def pause():
    """Between the two requests: until standard input is closed."""
    sys.stdin.buffer.read()


def with_requests(method, urls, body):
    import requests

    with requests.Session() as session:
        for i, url in enumerate(urls):
            if i:
                pause()
            status = session.request(method, url, data=body).status_code
            if i < len(urls) - 1:
                print(f"first request: HTTP {status}", flush=True)
    return status


def with_httpx(method, urls, body):
    import httpx

    with httpx.Client() as client:
        for i, url in enumerate(urls):
            if i:
                pause()
            status = client.request(method, url, content=body).status_code
            if i < len(urls) - 1:
                print(f"first request: HTTP {status}", flush=True)
    return status


def with_aiohttp(method, urls, body):
    import aiohttp

    async def fetch():
        async with aiohttp.ClientSession() as session:
            for i, url in enumerate(urls):
                if i:  # the event loop runs on while the pause lasts, as an application's would
                    await asyncio.get_running_loop().run_in_executor(None, pause)
                async with session.request(method, url, data=body) as response:
                    await response.read()
                    status = response.status
                if i < len(urls) - 1:
                    print(f"first request: HTTP {status}", flush=True)
        return status

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
    args = sys.argv[1:]
    urls = [args[2]]
    if args[-2:-1] == ["--then"]:
        urls.append(args.pop())
        args.pop()
    library, method = args[:2]
    body = b"x" * int(args[3]) if method == "POST" else None
    try:
        status = {"requests": with_requests, "httpx": with_httpx, "aiohttp": with_aiohttp}[library](method, urls, body)
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
