// Node.js's http module: one request, and what the application gets back.
//
//   node http_get.js GET URL | node http_get.js POST URL BYTES   [--then URL2]
//
// Prints "HTTP <status>" for a response, or String(error) as an application would log it
// and "code: <err.code>"; exits 1 then. --then URL2: once standard input is closed, the
// same request to URL2 through the same agent (the default one, which keeps connections
// alive since Node.js 19); the first's result is printed as "first request: HTTP <status>".
const args = process.argv.slice(2);
const then = args.at(-2) === "--then" ? args.splice(-2)[1] : null;
const [method, url, size] = args;
const { request } = require(url.startsWith("https:") ? "https" : "http");
const body = method === "POST" ? Buffer.alloc(Number(size), "x") : null;

function get(target, last) {
  const req = request(target, { method, headers: body ? { "Content-Length": body.length } : {} });
  req.on("response", (res) => {
    console.log(`${last ? "" : "first request: "}HTTP ${res.statusCode}`);
    res.resume();
    if (!last) res.on("end", () => process.stdin.resume().on("end", () => get(then, true))); // the pause
  });
  req.on("error", (err) => {
    console.log(String(err));
    if (err.code) console.log(`code: ${err.code}`);
    process.exitCode = 1;
  });
  req.end(body);
}
get(url, !then);
