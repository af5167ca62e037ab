// Node.js's http module: one request, and what the application gets back.
//
//   node http_get.js GET URL | node http_get.js POST URL BYTES
//
// Prints "HTTP <status>" for a response, or String(error) as an application would log it
// and "code: <err.code>"; exits 1 then.
const { request } = require(process.argv[3].startsWith("https:") ? "https" : "http");

const [method, url, size] = process.argv.slice(2);
const body = method === "POST" ? Buffer.alloc(Number(size), "x") : null;
const req = request(url, { method, headers: body ? { "Content-Length": body.length } : {} });
req.on("response", (res) => {
  console.log(`HTTP ${res.statusCode}`);
  res.resume();
});
req.on("error", (err) => {
  console.log(String(err));
  if (err.code) console.log(`code: ${err.code}`);
  process.exitCode = 1;
});
req.end(body);
