// A packet's margin number is its link: clicking it puts the packet's address in the
// address bar (the browser does that) and on the clipboard, and says so beside the line.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a.fg-packet-number");
  if (!link) return;
  const line = link.closest(".fg-packet");
  const url = new URL(link.getAttribute("href"), location.href).href;
  const say = (words) => () => {
    line.setAttribute("data-copied", words);
    setTimeout(() => line.removeAttribute("data-copied"), 2000);
  };
  const inBar = say("link in the address bar");  // no clipboard (plain http, or refused)
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(url).then(say("link copied"), inBar);
  } else {
    inBar();
  }
});

// A link to a packet of a folded trace (the client session's, under a page's programs) opens
// the fold, so that the line it names is shown (browsers that do not open it themselves)
const openTarget = () => {
  const target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  for (let fold = target && target.closest("details"); fold; fold = fold.parentElement.closest("details")) {
    if (!fold.open) fold.open = true;
  }
  if (target && target.closest("details")) target.scrollIntoView({block: "center"});
};
window.addEventListener("hashchange", openTarget);
window.addEventListener("DOMContentLoaded", openTarget);
