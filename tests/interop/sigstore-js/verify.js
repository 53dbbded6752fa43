// Verify one Sigstore bundle with sigstore-js (@sigstore/verify), independently of sigstore-python.
// Usage: node verify.js BUNDLE TRUSTED_ROOT IDENTITY ISSUER [ARTIFACT]
// Checks what sigstore-js checks by default: the certificate chain to the trusted root's CAs, one
// embedded SCT from its CT logs, one transparency-log entry (its SET and its inclusion proof against
// a checkpoint signed by a trusted log whose baseUrl names the checkpoint's signer), the signature
// (DSSE, or the artifact's for a message signature) and the SAN and issuer given.
// Prints {"ok": true, ...} and exits 0, or {"ok": false, "code", "message"} and exits 1.
"use strict";
const fs = require("fs");
const { bundleFromJSON } = require("@sigstore/bundle");
const { TrustedRoot } = require("@sigstore/protobuf-specs");
const { Verifier, toSignedEntity, toTrustMaterial } = require("@sigstore/verify");

const [bundlePath, rootPath, identity, issuer, artifactPath] = process.argv.slice(2);
try {
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, "utf8")));
  const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(rootPath, "utf8")));
  const artifact = artifactPath ? fs.readFileSync(artifactPath) : undefined;
  const verifier = new Verifier(toTrustMaterial(root));
  const signer = verifier.verify(toSignedEntity(bundle, artifact), {
    subjectAlternativeName: identity,
    extensions: { issuer },
  });
  const { subjectAlternativeName, extensions } = signer.identity || {};
  const result = { ok: true, identity: subjectAlternativeName, issuer: (extensions || {}).issuer };
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (err) {
  process.stdout.write(
    JSON.stringify({ ok: false, code: err.code || err.name, message: String(err.message) }) + "\n",
  );
  process.exit(1);
}
