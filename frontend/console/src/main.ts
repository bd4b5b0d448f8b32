// The customer-service console page (served at /console/ by the node's
// WebSocket listener; the WebSocket is the page's own origin, /v1/ws).
import { ConsoleApp } from "./app";

const app = new ConsoleApp();
document.getElementById("app")?.replaceChildren(app.root);
