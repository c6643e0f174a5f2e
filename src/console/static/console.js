// waymark console: the only script, served as a static file (CSP: script-src 'self').
// Auto-refresh of the runs page (remembered per browser) and a JSON check in event forms.
(function () {
  "use strict";
  var box = document.getElementById("autorefresh");
  if (box) {
    box.checked = window.localStorage.getItem("waymark.autorefresh") === "1";
    var timer = null;
    var arm = function () {
      if (timer) { clearInterval(timer); timer = null; }
      if (box.checked) { timer = setInterval(function () { window.location.reload(); }, 5000); }
    };
    box.addEventListener("change", function () {
      window.localStorage.setItem("waymark.autorefresh", box.checked ? "1" : "0");
      arm();
    });
    arm();
  }
  document.querySelectorAll("textarea.json-editor").forEach(function (area) {
    var check = function () {
      try { JSON.parse(area.value); area.setCustomValidity(""); }
      catch (e) { area.setCustomValidity("not JSON: " + e.message); }
    };
    area.addEventListener("input", check);
    check();
  });
})();
