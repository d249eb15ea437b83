// Lamina console: the copy button (everything else is server-rendered, htmx polls).
"use strict";
document.addEventListener("click", function (ev) {
  var button = ev.target.closest("[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.getAttribute("data-copy"));
  if (!field) return;
  field.select();
  var done = function () { button.textContent = "Copied"; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
  } else {
    document.execCommand("copy");
    done();
  }
});
// A self-refreshing region (hx-trigger="every …") skips a reload while the keyboard focus is
// on a control inside it: the reload would replace the focused button (Cancel, Acknowledge).
document.addEventListener("htmx:beforeRequest", function (ev) {
  var region = ev.detail.elt;
  var focused = document.activeElement;
  if (region && focused && focused !== region && focused !== document.body && region.contains(focused)) {
    ev.preventDefault();
  }
});
