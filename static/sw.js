// The service worker of browser notifications (Web Push; server/push.py). It only shows what
// a push carries ({title, body}: who wrote, never what) and opens Kinwire when tapped.
self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = {};
  }
  event.waitUntil(self.registration.showNotification(data.title || "Kinwire", {
    body: data.body || "",
    icon: "/static/img/apple-touch-icon.png",
    tag: data.title || "kinwire",
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow("/"));
});
