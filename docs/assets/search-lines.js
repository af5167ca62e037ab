// A line a program printed, pasted into the search box. Lunr's query syntax, which Material
// reads, takes a word followed by a colon as a field name ("curl: (56) ...",
// "java.net.SocketException: ...", "http://...", "192.0.2.1:8080"): the word is then not
// searched, or, the field being unknown, nothing is found at all. It takes text in double
// quotes as a phrase whose every word must match. The index splits words at colons and quotes
// (mkdocs.yml's separator): a colon in a query can only be lunr's syntax, so every colon
// becomes a space, as it is typed or pasted; a pasted line's double quotes too (typed ones
// stay, for a reader who means a phrase). (Go's whole line, `Get "https://...": read tcp
// 192.0.2.1:40836->...`, still finds nothing on some builds: there the term 192.0.2.1 alone
// makes Material's worker log "Invalid query" with lunr's TypeError "reading '_index'", and
// the whole query fails; why only some builds' indexes do that is not known yet.)
const PASTED = new Set(["insertFromPaste", "insertFromDrop", "insertReplacementText"]);

function plain(input, pasted) {
  if (!(input instanceof HTMLInputElement) || !input.matches("input.md-search__input")) return;
  const value = pasted ? input.value.replace(/[:"]/g, " ") : input.value.replace(/:/g, " ");
  if (value === input.value) return;
  const atEnd = input.selectionStart === input.value.length;
  input.value = value;
  if (atEnd) input.setSelectionRange(value.length, value.length);
}

document.addEventListener("input", (event) => plain(event.target, PASTED.has(event.inputType)), true);
