// The operations dashboard (served at /ops/ by the node's HTTP API listener;
// it reads /v1/nodes, /v1/stats and /v1/trace/{logid} of the same origin).
import { browserDeps, Dashboard } from "./app";

const dashboard = new Dashboard(browserDeps());
document.getElementById("app")?.replaceChildren(dashboard.root);
window.addEventListener("resize", () => dashboard.resize());
dashboard.start();
