// Runs the harness in Node for client/js_test.go: node node_driver.mjs URL
// CHANNEL OPTIONS_JSON. Each line "state" on stdin is answered with one
// JSON line on stdout; "exit" closes the client and exits.
import { createInterface } from "node:readline";
import { start, snapshot } from "./harness.mjs";

const [url, channel, opts] = process.argv.slice(2);
const state = start(url, channel, JSON.parse(opts || "{}"));
const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (line === "state") {
    process.stdout.write(JSON.stringify(snapshot(state)) + "\n");
  } else if (line === "exit") {
    state.client.close();
    rl.close();
  }
});
rl.on("close", () => {
  state.client.close();
  process.exit(0);
});
