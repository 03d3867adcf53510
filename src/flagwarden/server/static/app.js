// flagwarden dashboard: live updates. The page is server-rendered and works without this;
// with it, a change made anywhere (a worker, the CLI, the watch, another browser) is shown
// without a reload: the server's event stream says which flags changed, and the part of the
// page that shows them is fetched again.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.fragment || !window.EventSource) {
    return;
  }
  var watching = live.dataset.watch;
  var status = document.createElement("div");
  status.id = "live-status";
  status.textContent = "connecting";
  document.body.appendChild(status);
  var scheduled = null; // a refresh waiting to start
  var running = false; // one fragment request at a time: an older answer never lands last
  var again = false; // a change arrived while a request was running

  function refresh() {
    scheduled = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    fetch(live.dataset.fragment, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          window.location.assign("/login"); // the session ended (a restart, a revoked token)
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          live.innerHTML = html;
          live.dataset.updated = String(Date.now());
          status.textContent = "live, updated " + new Date().toLocaleTimeString();
        }
      })
      .catch(function () {
        status.textContent = "update failed";
      })
      .then(function () {
        running = false;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  function schedule() {
    if (scheduled === null) {
      scheduled = window.setTimeout(refresh, 100); // coalesce a burst of changes
    }
  }

  function connect() {
    var events = new EventSource("/events");
    events.onopen = function () {
      status.textContent = "live";
      live.dataset.live = "open";
    };
    events.onerror = function () {
      status.textContent = "reconnecting";
      live.dataset.live = "reconnecting";
      if (events.readyState === EventSource.CLOSED) {
        // The browser gave up (the stream answered with a redirect: no session any more).
        // Refreshing sends a lost session to the login page; otherwise try again later.
        refresh();
        window.setTimeout(connect, 5000);
      }
    };
    events.addEventListener("change", function (message) {
      var change = JSON.parse(message.data);
      if (watching === "*" || change.reload || change.flags.indexOf(watching) >= 0) {
        schedule();
      }
    });
  }

  connect();
})();
