// The sequence diagrams' look, given to Mermaid before Material draws them (this script runs
// before the page is ready; Material mounts its diagrams once it is). Material draws each
// diagram into a closed shadow root: no page style reaches it, only the diagram's own CSS
// (themeCSS, through the one mermaid.initialize call Material makes), the custom
// properties it inherits, and the diagram's text (a %%{init}%% directive).
(() => {
  // Mermaid draws the x ending a RST's arrow (marker #crosshead) in fixed black, invisible
  // on the dark palette: the arrow and its x take the RST colour (docs/assets/diagrams.css)
  const themeCSS = "#crosshead path { stroke: var(--fg-rst-color); }"
    + " line.messageLine0[marker-end*='crosshead'] { stroke: var(--fg-rst-color); }"
    // a label is drawn over the lifelines it crosses: a halo of the page's colour keeps its
    // commas and dots from vanishing into a line
    + " text.messageText { paint-order: stroke; stroke: var(--md-default-bg-color); stroke-width: 4px;"
    + " stroke-linejoin: round; }";
  // boxMargin: the gap between a label and its arrow. Mermaid's 10 lets a packet's number
  // (a 12 px circle at the arrow's start) reach into the label above it.
  const initialize = mermaid.initialize.bind(mermaid);
  mermaid.initialize = (config) => initialize({
    ...config,
    themeCSS: (config.themeCSS || "") + themeCSS,
    sequence: { ...config.sequence, boxMargin: 16 },
  });

  // Below Material's tablet breakpoint each diagram is laid out for the column it sits in,
  // so that it fits at full size: hosts spread evenly across it, labels wrapped between the
  // ends of their arrows. width: a host's box, wide enough for an address on its own line.
  if (!matchMedia("(max-width: 44.9375em)").matches) return;
  const phone = { wrap: true, width: 120, diagramMarginX: 4, messageFontSize: "14px", noteFontSize: "14px",
                  actorFontSize: "14px" };
  for (const code of document.querySelectorAll(".fg-diagram pre.mermaid > code")) {
    const hosts = (code.textContent.match(/^\s*participant /gm) || []).length;
    const column = code.closest(".fg-diagram").clientWidth;
    const actorMargin = Math.max(12, Math.floor((column - hosts * phone.width - 2 * phone.diagramMarginX)
                                                / Math.max(hosts - 1, 1)));
    code.textContent = `%%{init: ${JSON.stringify({ sequence: { ...phone, actorMargin } })}}%%\n` + code.textContent;
  }
})();
