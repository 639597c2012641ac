// The sidebar's one-line sync status, from the node's `status`.

import type { Status } from "../api";

/** What to say about sync, and its class: "on", "busy" (catching up) or "off". */
export function syncLine(status: Status | null, stream: boolean): { text: string; cls: string } {
  if (!stream) return { text: "Reconnecting to your node…", cls: "off" };
  if (!status) return { text: "Starting…", cls: "off" };
  const connected = status.peers.filter((p) => p.connected).length;
  const relays = status.relays.length ? ` · ${status.relays.length} ${status.relays.length === 1 ? "relay" : "relays"}` : "";
  const up = status.catching_up;
  if (up && up.total > 0 && up.done < up.total) return { text: `Catching up · ${up.done} of ${up.total}`, cls: "busy" };
  if (!status.online) return { text: "Offline · your messages sync when a peer is back", cls: "off" };
  if (connected === 0) return { text: `Online${relays}`, cls: "on" };
  return { text: `Online · ${connected} ${connected === 1 ? "peer" : "peers"}${relays}`, cls: "on" };
}
