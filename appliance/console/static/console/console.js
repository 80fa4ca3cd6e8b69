// The console's own script (served by the appliance, no inline scripts: CSP).
// Copy buttons, upload with progress, charts (uPlot), and refusals shown in words.
(function () {
  "use strict";

  // A refused action (4xx/5xx answered to htmx) is shown, not swallowed.
  document.addEventListener("htmx:responseError", function (event) {
    var box = document.getElementById("errors");
    if (box) box.textContent = event.detail.xhr.responseText || ("refused: HTTP " + event.detail.xhr.status);
  });
  document.addEventListener("htmx:beforeRequest", function () {
    var box = document.getElementById("errors");
    if (box) box.textContent = "";
  });

  // Copy buttons: <button data-copy="#id">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var selector = button.getAttribute("data-copy");
    var source = document.querySelector(selector);
    var note = document.querySelector('[data-copied-for="' + selector + '"]');
    var text = source ? source.textContent : "";
    var done = function () { if (note) note.textContent = "copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { select(source); });
    } else {
      select(source);
      if (document.execCommand("copy")) done();
    }
  });

  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Uploads: XMLHttpRequest to draw progress; the server answers {redirect} or {error}.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-upload")) return;
    event.preventDefault();
    var bar = form.querySelector("progress");
    var status = form.querySelector("#upload-status");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) {
        bar.value = Math.round((100 * e.loaded) / e.total);
        status.textContent = bar.value + "% of " + Math.round(e.total / 1024) + " KiB sent";
      }
    });
    xhr.addEventListener("load", function () {
      var answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = {error: xhr.responseText}; }
      if (xhr.status < 300 && answer.redirect) {
        status.textContent = "stored and verified";
        window.location.assign(answer.redirect);
      } else {
        status.textContent = "";
        document.getElementById("errors").textContent = "Upload refused: " + (answer.error || xhr.status);
      }
    });
    xhr.addEventListener("error", function () {
      document.getElementById("errors").textContent = "Upload failed: the connection was lost";
    });
    xhr.send(new FormData(form));
  });

  // Charts: <div data-chart="json-script-id" data-fields="a,b" data-labels="A,B" data-title="…">.
  var COLOURS = ["#2f6fde", "#d68910", "#c0392b", "#1e8449"];

  function drawCharts() {
    if (typeof uPlot === "undefined") return;
    document.querySelectorAll("[data-chart]").forEach(function (box) {
      if (box.getAttribute("data-drawn")) return;
      var data = JSON.parse(document.getElementById(box.getAttribute("data-chart")).textContent);
      var fields = box.getAttribute("data-fields").split(",");
      var labels = box.getAttribute("data-labels").split(",");
      var columns = [data.t].concat(fields.map(function (f) { return data[f]; }));
      var measured = fields.some(function (f) { return data[f].some(function (v) { return v !== null && v !== 0; }); });
      var series = [{}].concat(fields.map(function (f, i) {
        return {label: labels[i] || f, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: false};
      }));
      var width = Math.max(300, box.clientWidth || 540);
      new uPlot({title: box.getAttribute("data-title") + (measured ? "" : " · nothing measured"),
                 width: width, height: 180, series: series, scales: {x: {time: true}},
                 axes: [{}, {size: 50}]}, columns, box);
      box.setAttribute("data-drawn", "1");
    });
  }

  document.addEventListener("DOMContentLoaded", drawCharts);
  document.addEventListener("htmx:afterSettle", drawCharts);
})();
