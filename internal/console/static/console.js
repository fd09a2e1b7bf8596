// wxdomain console: live updates by polling, no framework. An element
// with data-poll="URL" is replaced by the HTML fragment URL answers, every
// data-every milliseconds (default 2000), until the fragment says
// data-done="true".
(function () {
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var every = parseInt(el.getAttribute("data-every") || "2000", 10);
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          var box = document.createElement("div");
          box.innerHTML = html;
          var next = box.firstElementChild;
          if (!next) { return; }
          el.replaceWith(next);
          el = next;
          if (next.getAttribute("data-done") !== "true") { setTimeout(tick, every); }
        })
        .catch(function () { setTimeout(tick, every * 2); });
    }
    if (el.getAttribute("data-done") !== "true") { setTimeout(tick, every); }
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
  });
})();
