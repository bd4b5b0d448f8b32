// The customer-service console (placeholder while the page is written).
const app = document.getElementById("app");
if (app) {
  app.textContent = "msgplatform console";
}
