// Finds one document through flyt-relay's /sync with the real automerge-repo client and prints
// it as JSON on the last line. Usage: node sync.mjs WS_URL DOCUMENT_ID
// WS_URL carries the signed token: ws://HOST/sync?device=HEX&ts=MS&sig=HEX (see README).
// Exits 1 when the document is unavailable or nothing arrives within 20 s.
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const [url, documentId] = process.argv.slice(2)
if (!url || !documentId) {
  console.error("usage: node sync.mjs WS_URL DOCUMENT_ID")
  process.exit(2)
}
const adapter = new WebSocketClientAdapter(url, 0)
const repo = new Repo({ network: [adapter] })
const timer = setTimeout(() => {
  console.error("timed out")
  process.exit(1)
}, 20_000)
try {
  const handle = await repo.find(documentId)
  const doc = handle.doc()
  console.log(JSON.stringify(doc))
  clearTimeout(timer)
  await repo.shutdown().catch(() => {})
  process.exit(0)
} catch (e) {
  console.error(`not synced: ${e.message ?? e}`)
  process.exit(1)
}
