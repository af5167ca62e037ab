// Node.js's fetch() (undici): one request, and what the application gets back.
//
//   node fetch.js GET URL | node fetch.js POST URL BYTES   [--then URL2]
//
// Prints "HTTP <status>" for a response, or String(error), its cause and the cause's code
// (fetch wraps every network error in "TypeError: fetch failed"); exits 1 then.
// --then URL2: once standard input is closed, the same request to URL2 (fetch() keeps
// its connections alive); the first's result is printed as "first request: HTTP <status>".

const args = process.argv.slice(2);
const then = args.at(-2) === "--then" ? args.splice(-2)[1] : null;
const [method, url, size] = args;
const body = method === "POST" ? Buffer.alloc(Number(size), "x") : undefined;

async function main() {
  const targets = then ? [url, then] : [url];
  for (const [i, target] of targets.entries()) {
    if (i > 0) await new Promise((resolve) => process.stdin.on("end", resolve).resume()); // the pause
    let res;
    try {
      res = await fetch(target, { method, body });
    } catch (err) {
      console.log(String(err));
      if (err.cause) {
        console.log(`cause: ${String(err.cause)}`);
        if (err.cause.code) console.log(`code: ${err.cause.code}`);
      }
      process.exitCode = 1;
      return;
    }
    console.log(`${i < targets.length - 1 ? "first request: " : ""}HTTP ${res.status}`);
    await res.arrayBuffer();
  }
}
main();
