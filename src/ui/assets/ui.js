// pushpool dashboard: times in the browser's zone (UTC on hover), live run view, light refresh.
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      t.textContent = d.toLocaleString(undefined, {
        year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit"
      });
      if (!t.title) t.title = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    });
  }

  // One run's page: state, timeline and new log lines every second until the run ends.
  function liveRun(el) {
    var url = el.getAttribute("data-live-url");
    var logs = parseInt(el.getAttribute("data-logs") || "0", 10);
    var logBox = document.getElementById("logs");
    function tick() {
      fetch(url + "?logs=" + logs, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (d) {
          document.getElementById("run-state").innerHTML = d.state_html;
          document.getElementById("run-message").textContent = d.message || "";
          var tl = document.getElementById("run-timeline");
          tl.innerHTML = d.timeline_html;
          localTimes(tl);
          if (d.infrastructure_id) {
            document.getElementById("run-infra").innerHTML = "<code></code>";
            document.querySelector("#run-infra code").textContent = d.infrastructure_id;
          }
          if (d.logs_html) {
            var atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
            logBox.insertAdjacentHTML("beforeend", d.logs_html);
            if (atEnd) logBox.scrollTop = logBox.scrollHeight;
          }
          logs = d.logs;
          el.setAttribute("data-state", d.state_type);
          if (!d.can_cancel) {
            var c = document.querySelector("#run-actions form[action$='/cancel']");
            if (c) c.remove();
          }
          if (d.rerun_html && !document.querySelector("#run-actions form[action$='/rerun']")) {
            document.getElementById("run-actions").insertAdjacentHTML("beforeend", d.rerun_html);
          }
          if (d.terminal) {
            el.setAttribute("data-live", "0");
          } else {
            setTimeout(tick, 1000);
          }
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 500);
  }

  // Lists and the dashboard: swap in a fresh copy of the marked element every 5 s.
  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    setInterval(function () {
      if (document.hidden) return;
      fetch(url, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(el.id);
          if (fresh && !el.contains(document.activeElement)) {
            el.innerHTML = fresh.innerHTML;
            localTimes(el);
          }
        })
        .catch(function () {});
    }, 5000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var run = document.getElementById("run");
    if (run && run.getAttribute("data-live") === "1") liveRun(run);
    document.querySelectorAll("[data-refresh][id]").forEach(refresh);
  });
})();
