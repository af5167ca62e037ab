// Node.js's fetch() (undici): one request, and what the application gets back.
//
//   node fetch.js GET URL | node fetch.js POST URL BYTES
//
// Prints "HTTP <status>" for a response, or String(error), its cause and the cause's code
// (fetch wraps every network error in "TypeError: fetch failed"); exits 1 then.

const [method, url, size] = process.argv.slice(2);
const body = method === "POST" ? Buffer.alloc(Number(size), "x") : undefined;
fetch(url, { method, body }).then(
  async (res) => {
    console.log(`HTTP ${res.status}`);
    await res.arrayBuffer();
  },
  (err) => {
    console.log(String(err));
    if (err.cause) {
      console.log(`cause: ${String(err.cause)}`);
      if (err.cause.code) console.log(`code: ${err.cause.code}`);
    }
    process.exitCode = 1;
  },
);
