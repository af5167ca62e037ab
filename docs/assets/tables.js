// A table wider than its column (on a phone: the kernel's word, the outcomes, the census)
// would scroll sideways, its last columns out of sight. Such a table is shown row
// by row instead (docs/assets/fieldguide.css, table[data-fg-stacked]): each cell under its
// column's header, which it carries as data-label. Measured again when the window resizes.
(() => {
  const content = () => document.querySelectorAll(
    ".md-content .md-typeset table:not([class]), .md-content .jupyter-wrapper table.dataframe");
  const label = (table) => {
    const headers = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    for (const row of table.querySelectorAll("tbody tr")) {
      [...row.children].forEach((cell, i) => cell.setAttribute("data-label", headers[i] || ""));
    }
  };
  const fit = () => {
    for (const table of content()) {
      table.removeAttribute("data-fg-stacked");
      const column = table.closest(".md-typeset__scrollwrap") || table.parentElement;
      // (its box may overflow where the table itself does not: inside an admonition's fold)
      if (table.scrollWidth > column.clientWidth + 1 || column.scrollWidth > column.clientWidth + 1) {
        label(table);
        table.setAttribute("data-fg-stacked", "");
      }
    }
  };
  // Material wraps each table in its own scrolling box when it mounts the page's components
  document$.subscribe(fit);
  let pending = 0;
  addEventListener("resize", () => { cancelAnimationFrame(pending); pending = requestAnimationFrame(fit); });
})();
