// Chinese queries: Material searches the last word as a prefix (word*), and a prefix is not
// split into words, so "连接重置" finds nothing while "连接重置 " (a finished word) is split
// and found. When a Chinese phrase arrives whole (an input method commits it, or it is
// pasted), finish it with a space before Material reads the query.
const HAN_AT_END = /\p{Script=Han}$/u;

function finish(input) {
  if (input instanceof HTMLInputElement && input.matches("input.md-search__input") && HAN_AT_END.test(input.value)) {
    input.value += " ";
  }
}

document.addEventListener("compositionend", (event) => finish(event.target), true);
document.addEventListener("input", (event) => {
  if (!event.isComposing && event.data && [...event.data].length > 1) finish(event.target);
}, true);
