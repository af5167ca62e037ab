// "Explain a capture": runs rst_explain, the site's own Python, in Pyodide, in this tab.
//
// Everything comes from this site (docs/fieldguide/explainer.py publishes it): the manifest,
// Pyodide's runtime and rst_explain's sources, each checked against the manifest's SHA-256
// before Python may import it. The reader's capture never leaves the page. What the
// explainer says is written with text nodes only (recorded and pasted text is never HTML).

const root = document.getElementById("fg-explain");
const site = new URL("../", import.meta.url);  // this file is assets/explain.js
const form = root.querySelector("form");
const textarea = root.querySelector("textarea");
const fileInput = root.querySelector("input[type=file]");
const controls = root.querySelectorAll("button, input, textarea");
const status = root.querySelector(".fg-explain-status");
const output = root.querySelector(".fg-explain-result");

// Python's side: bytes in, JSON out; an input the explainer refuses is an answer, not a failure
const BRIDGE = `
import json, sys
sys.path.insert(0, "/explain")
import rst_explain

def explain(data, name):
    try:
        return json.dumps({"result": rst_explain.explain(data.to_bytes(), name)})
    except rst_explain.ExplainError as exc:
        return json.dumps({"error": str(exc)})

explain
`;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);  // strings become text nodes
  return node;
}

function say(words, kind = "info") {
  status.textContent = words;
  status.dataset.kind = kind;
}

async function fetchOk(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) throw new Error(`${url.pathname || url}: HTTP ${response.status}`);
  return response;
}

async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// one file of rst_explain, as the manifest lists it: its bytes, once its digest is checked
async function source(file) {
  // the digest in the query: a new version of a file is a new address, never a stale cache
  const url = new URL(`${file.url}?sha256=${file.sha256}`, site);
  const bytes = new Uint8Array(await (await fetchOk(url)).arrayBuffer());
  if (crypto.subtle && await sha256(bytes) !== file.sha256) {  // (no crypto.subtle on plain http)
    throw new Error(`${file.url} is not the file this build published`);
  }
  return bytes;
}

async function load() {
  const manifest = await (await fetchOk(new URL("assets/explain/manifest.json", site), {cache: "no-cache"})).json();
  say(`Loading the explainer: Python (Pyodide ${manifest.pyodide.version}) and rst_explain,`
      + ` ${(manifest.pyodide.bytes / 1e6).toFixed(1)} MB the first time…`);
  const indexURL = new URL(manifest.pyodide.index, site).href;
  const sources = Promise.all(manifest.files.map(source));  // fetched while Python starts
  sources.catch(() => {});  // (awaited below: a failure is reported there, once)
  const {loadPyodide} = await import(new URL("pyodide.mjs", indexURL).href);
  const pyodide = await loadPyodide({indexURL, packages: []});
  (await sources).forEach((bytes, i) => {
    const target = `/explain/${manifest.files[i].path}`;
    pyodide.FS.mkdirTree(target.slice(0, target.lastIndexOf("/")));
    pyodide.FS.writeFile(target, bytes);
  });
  const explain = pyodide.runPython(BRIDGE);
  const python = pyodide.runPython("import sys; sys.version.split()[0]");
  return {manifest, explain, python};
}

// The page a verdict names, and the packet of its capture that explains it (#packet-N, N from
// this build's recording of that page)
function pageLink(manifest, verdict) {
  const page = manifest.pages[verdict.slug];
  if (page === undefined) return [element("code", {}, verdict.slug)];  // not a page of this build: no link
  const href = new URL(`scenarios/${verdict.slug}/`, site);
  const number = page.packets[verdict.packet_name];
  if (number === undefined) return [element("a", {href: href.href, class: "fg-explain-page"}, page.title)];
  href.hash = `packet-${number}`;
  return [element("a", {href: href.href, class: "fg-explain-page"}, page.title),
          element("span", {class: "fg-verdict-packet"}, `, at its packet ${number} (${verdict.packet_name})`)];
}

function list(items, className) {
  return element("ul", {class: className}, ...items.map((item) => element("li", {}, String(item))));
}

// what a verdict's number means (rst_explain/rules.py: each page's required and weighed features)
const POINTS = "points for the features of that page this RST shows on the wire; only their order, and ties, mean anything";

function verdictItem(manifest, verdict, first, tied) {
  const item = element("li", {class: "fg-verdict", "data-slug": verdict.slug,
                              "data-score": JSON.stringify(verdict.score)},
    element("span", {class: "fg-verdict-score", title: POINTS},
            `${verdict.score} point${verdict.score === 1 ? "" : "s"}${tied ? ", tied for first" : ""}: `),
    ...pageLink(manifest, verdict));
  const why = [];
  if (verdict.evidence.length) why.push(list(verdict.evidence, "fg-evidence"));
  if (verdict.against.length) {
    why.push(element("p", {class: "fg-against-title"}, "Against it:"), list(verdict.against, "fg-against"));
  }
  // the evidence of the pages ranked first is shown; the others' is a click away
  if (first || !why.length) item.append(...why);
  else item.append(element("details", {}, element("summary", {}, "evidence"), ...why));
  return item;
}

// best first; `tie`: the slugs ranked first (several: a tie)
function verdictList(manifest, verdicts, tie) {
  const first = new Set(tie.length ? tie : verdicts.slice(0, 1).map((v) => v.slug));
  return element("ol", {class: "fg-verdicts"},
    ...verdicts.map((v) => verdictItem(manifest, v, first.has(v.slug), first.has(v.slug) && first.size > 1)));
}

function rstSection(manifest, rst, index) {
  const section = element("section", {class: "fg-explain-rst", "data-packet": JSON.stringify(rst.packet),
                                      "data-time": JSON.stringify(rst.time)},
    element("h3", {}, `RST ${index + 1}: packet ${rst.packet}, [${rst.flags}] at ${rst.at}`),
    element("p", {class: "fg-explain-flow"}, "from ", element("code", {}, rst.src), " to ", element("code", {}, rst.dst)));
  if (rst.verdicts.length) {
    section.append(element("p", {class: "fg-explain-points"}, `The pages that fit, best first, with their ${POINTS}:`),
                   verdictList(manifest, rst.verdicts, rst.tie));
  } else {
    section.append(element("p", {}, "No page of this guide matches this RST."));
  }
  if (rst.tie.length > 1) {
    section.append(element("p", {class: "fg-tie"},
      `A tie: ${rst.tie.map((slug) => (manifest.pages[slug] || {title: slug}).title).join("; ")}: alike on the wire.`));
  }
  if (rst.next.length) {
    section.append(element("p", {class: "fg-next-title"},
      rst.tie.length > 1 ? "To tell them apart, capture or check next:" : "Capture or check next:"),
      list(rst.next, "fg-next"));
  }
  return section;
}

function noteItem(manifest, note) {
  const item = element("li", {class: "fg-note", "data-packet": JSON.stringify(note.packet)},
    element("span", {class: "fg-note-text"}, note.packet ? `${note.text} (packet ${note.packet})` : note.text));
  if (note.verdicts.length) {
    item.append(verdictList(manifest, note.verdicts, note.verdicts.filter((v) => v.score === note.verdicts[0].score)
      .map((v) => v.slug)));
  }
  return item;
}

function show(manifest, name, result) {
  const count = result.rsts.length;
  const parts = [element("h2", {id: "the-verdicts"},
    `${name}: ${count === 0 ? "no RST" : count === 1 ? "1 RST" : `${count} RSTs`}`)];
  result.rsts.forEach((rst, i) => parts.push(rstSection(manifest, rst, i)));
  if (result.notes.length) {
    parts.push(element("h3", {}, count ? "And the connections without a RST" : "What the capture shows"),
      element("ul", {class: "fg-notes"}, ...result.notes.map((note) => noteItem(manifest, note))));
  }
  output.replaceChildren(...parts);
  parts[0].scrollIntoView({block: "start"});  // the answer is below the form: bring it up
}

async function main() {
  let loaded;
  try {
    loaded = await load();
  } catch (error) {
    console.error(error);  // for whoever maintains the page; the reader gets a sentence
    say("The explainer could not be loaded (this page's files did not arrive whole). Reload the page to try again.", "error");
    root.dataset.state = "failed";
    return;
  }
  const {manifest, explain, python} = loaded;

  async function run(bytes, name) {
    root.dataset.state = "busy";
    output.replaceChildren();
    say(`Reading ${name}…`);
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve)));  // show it first
    try {
      const answer = JSON.parse(explain(bytes, name));
      if (answer.error !== undefined) {
        say(answer.error, "error");
      } else {
        show(manifest, name, answer.result);
        say(`Explained by rst_explain (Python ${python} in your browser).`);
      }
    } catch (error) {  // a bug of the explainer: its traceback goes to the console, not to the reader
      console.error(error);
      say(`The explainer failed on ${name} (a bug in rst_explain, not in your capture; please report it).`, "error");
    }
    root.dataset.state = "ready";
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(new TextEncoder().encode(textarea.value), "the pasted lines");
  });
  fileInput.addEventListener("change", async () => {
    const file = fileInput.files[0];
    if (!file) return;
    const bytes = new Uint8Array(await file.arrayBuffer());
    fileInput.value = "";  // choosing the same file again explains it again
    run(bytes, file.name);
  });
  controls.forEach((control) => { control.disabled = false; });
  say("Ready: paste tcpdump lines, or choose a capture file.");
  root.dataset.state = "ready";
  performance.mark("fg-explain-ready");  // the page weight's load time (tests/test_browser.py)
}

main();
