// Chinese queries. The index splits Chinese text into words with jieba at build time.
// Material's search cuts a run of Chinese characters itself, greedily into words of the
// index, but keeps only those it reaches from the run's start: 连接重置 is searched as 连接
// alone, 被对端重置 as nothing. So when a Chinese phrase arrives whole (an input method
// commits it, or it is pasted), split it into words with the browser's own Chinese word
// segmenter and finish it with a space, before Material reads the query. Each word is
// then searched on its own, as a prefix: 重 (the segmenter leaves 重置 as 重 置) finds
// 重置 and 重设 alike.
const HAN = /\p{Script=Han}/u;
const words = "Segmenter" in Intl ? new Intl.Segmenter("zh", {granularity: "word"}) : null;

function split(text) {
  if (!words) return text;
  // a run of two characters is one word already (超时): only longer runs are split
  return text.replace(/\p{Script=Han}{3,}/gu, (run) => [...words.segment(run)].map((part) => part.segment).join(" "));
}

function finish(input, committed) {
  if (!(input instanceof HTMLInputElement) || !input.matches("input.md-search__input")) return;
  // only a phrase of two characters or more, committed at the end of the query: a reader
  // typing one character at a time, or editing in the middle, keeps the box as typed
  if (!committed || [...committed].length < 2 || !HAN.test(committed)) return;
  if (input.selectionStart !== input.value.length) return;
  input.value = split(input.value.trimEnd()).replace(/\s+/g, " ") + " ";
}

document.addEventListener("compositionend", (event) => finish(event.target, event.data), true);
document.addEventListener("input", (event) => {
  if (!event.isComposing) finish(event.target, event.data);
}, true);
