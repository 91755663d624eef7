// Small progressive enhancements; every page works without them.
(function () {
  "use strict";

  // Reload a region's page every N ms while something on it is busy (converting, starting...).
  function autoRefresh() {
    var el = document.querySelector("[data-refresh]");
    if (!el) return;
    var ms = parseInt(el.getAttribute("data-refresh"), 10) || 3000;
    setTimeout(function () { if (!document.hidden) window.location.reload(); else autoRefresh(); }, ms);
  }

  // Poll a JSON endpoint; update the progress text, reload when the status changes.
  function pollStatus() {
    var el = document.querySelector("[data-poll]");
    if (!el) return;
    var url = el.getAttribute("data-poll"), status = el.getAttribute("data-poll-status");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return setTimeout(tick, 4000);
          if (data.status !== status) return window.location.reload();
          var p = el.querySelector("[data-progress]");
          if (p && data.progress) p.textContent = data.progress;
          setTimeout(tick, 1500);
        })
        .catch(function () { setTimeout(tick, 4000); });
    }
    setTimeout(tick, 1000);
  }

  // Upload forms show real upload progress (XHR); the server's answer replaces the page.
  function uploadProgress() {
    var form = document.querySelector("form[data-upload-progress]");
    if (!form || !window.FormData) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var box = form.querySelector(".progress"), bar = form.querySelector("progress"), text = form.querySelector(".progress-text");
      var button = form.querySelector("button[type=submit]");
      box.hidden = false; button.disabled = true;
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action") || window.location.href);
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round((e.loaded / e.total) * 100);
        bar.value = pct; text.textContent = pct + "% uploaded";
      };
      xhr.upload.onload = function () { text.textContent = "Uploaded; checking the model…"; };
      xhr.onload = function () {
        if (xhr.responseURL && xhr.responseURL !== window.location.href && xhr.status < 400) {
          window.location.href = xhr.responseURL;
          return;
        }
        document.open(); document.write(xhr.responseText); document.close();
      };
      xhr.onerror = function () { button.disabled = false; text.textContent = "Upload failed: the connection was lost."; };
      xhr.send(new FormData(form));
    });
  }

  // Re-fetch a live fragment of the page (worker states) without reloading it.
  function liveFragments() {
    document.querySelectorAll("[data-fragment]").forEach(function (el) {
      var url = el.getAttribute("data-fragment");
      var ms = parseInt(el.getAttribute("data-fragment-interval"), 10) || 3000;
      function tick() {
        if (document.hidden || el.contains(document.activeElement)) return setTimeout(tick, ms);
        fetch(url, { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) {
            if (html !== null && !el.contains(document.activeElement)) {
              el.innerHTML = html;
              el.dispatchEvent(new CustomEvent("kiln:refreshed", { bubbles: true }));
            }
            setTimeout(tick, ms);
          })
          .catch(function () { setTimeout(tick, ms * 2); });
      }
      setTimeout(tick, ms);
    });
  }

  // Forms that need a confirmation first.
  function confirms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  }

  // Relative bars for profile tables.
  function bars() {
    var items = document.querySelectorAll(".bar[data-value]");
    var max = 0;
    items.forEach(function (b) { max = Math.max(max, parseFloat(b.getAttribute("data-value")) || 0); });
    items.forEach(function (b) {
      var v = parseFloat(b.getAttribute("data-value")) || 0;
      b.style.width = (max ? Math.max(2, (v / max) * 160) : 2) + "px";
    });
  }

  // The split form's running total: the weights must add up to 100 before the server is asked.
  function splitTotal() {
    document.querySelectorAll("form[data-split-form]").forEach(function (form) {
      var out = form.querySelector("[data-split-total]");
      if (!out) return;
      function update() {
        var total = 0;
        form.querySelectorAll("input[data-weight]:not([disabled])").forEach(function (input) {
          total += parseInt(input.value, 10) || 0;
        });
        out.textContent = "Total " + total + "%" + (total === 100 ? "" : " (must be 100%)");
        out.classList.toggle("error", total !== 100);
      }
      form.addEventListener("input", update);
      update();
    });
  }

  document.addEventListener("DOMContentLoaded", function () { autoRefresh(); pollStatus(); uploadProgress(); bars(); liveFragments(); confirms(); splitTotal(); });
})();
