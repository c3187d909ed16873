// A search for a rule id opens the rule's page with ?rule=ID (see
// tools/docs_hooks.py): mark that id where it occurs whole on the page, and
// nothing else (Material's own highlighter would split it at the hyphen).
(() => {
  const id = new URLSearchParams(location.search).get("rule");
  if (!id || !/^[A-Z][A-Z0-9]*-\d+$/.test(id)) return;
  const whole = new RegExp("(?<![\\w/#.-])" + id.replace("-", "\\-") + "(?![\\w-]|\\.\\d)", "g");
  const root = document.querySelector("article") || document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode())
    if (n.textContent.match(whole) && !n.parentElement.closest("script, style")) found.push(n);
  for (const node of found) {
    const parts = node.textContent.split(new RegExp("(" + whole.source + ")"));
    const frag = document.createDocumentFragment();
    for (const part of parts) {
      if (part === id) {
        const m = document.createElement("mark");
        m.setAttribute("data-md-highlight", "");
        m.className = "rule-mark";
        m.textContent = part;
        frag.appendChild(m);
      } else if (part) {
        frag.appendChild(document.createTextNode(part));
      }
    }
    node.replaceWith(frag);
  }
})();
