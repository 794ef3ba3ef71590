// GenieACS extension: the XMPP password crbroker derives for a CPE (crbroker README, "Derived
// credentials"):
//
//   password = base64url without padding of HMAC-SHA-256(key = secret, message = lowercase(username))
//
// where the secret is the content of the secret file named in crbroker's [accounts.derived]
// (the same file, copied to the ACS host, readable only by GenieACS), trailing newlines removed.
//
// Install: copy this file to GenieACS's ext directory (GENIEACS_EXT_DIR) and set
// XMPP_DERIVED_SECRET_FILE in the environment of genieacs-cwmp (default
// /etc/genieacs/xmpp-derived.key). In a provision script:
//
//   const password = ext("derive-xmpp-password", "password", username);
//
// From a shell (checks against `crbroker derive-password USER`):
//
//   node derive-xmpp-password.js SECRET_FILE USERNAME

"use strict";

const crypto = require("crypto");
const fs = require("fs");

const DEFAULT_SECRET_FILE = "/etc/genieacs/xmpp-derived.key";

// The secret file's bytes without trailing "\n" and "\r", as crbroker reads it.
function readSecret(file) {
  const bytes = fs.readFileSync(file);
  let end = bytes.length;
  while (end > 0 && (bytes[end - 1] === 0x0a || bytes[end - 1] === 0x0d)) end--;
  if (end < 32) throw new Error(`${file}: the secret must be at least 32 bytes, found ${end}`);
  return bytes.subarray(0, end);
}

// ASCII lower case only, as crbroker normalises usernames (toLowerCase() would also fold
// non-ASCII letters).
function asciiLowercase(text) {
  return text.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

// The derived password of `username` under `secret` (a Buffer). Node's "base64url" encoding is
// RFC 4648 §5 without padding: 43 characters for the 32-byte HMAC.
function derive(secret, username) {
  return crypto
    .createHmac("sha256", secret)
    .update(asciiLowercase(String(username)), "utf8")
    .digest("base64url");
}

let cached = null;

// GenieACS calls extension functions as fn(args, callback): args[0] is the username.
exports.password = function (args, callback) {
  try {
    if (cached === null) {
      cached = readSecret(process.env.XMPP_DERIVED_SECRET_FILE || DEFAULT_SECRET_FILE);
    }
    callback(null, derive(cached, args[0]));
  } catch (err) {
    callback(err);
  }
};

exports.derive = derive;
exports.readSecret = readSecret;

if (require.main === module) {
  const [file, username] = process.argv.slice(2);
  if (!file || !username) {
    process.stderr.write("usage: node derive-xmpp-password.js SECRET_FILE USERNAME\n");
    process.exit(2);
  }
  process.stdout.write(derive(readSecret(file), username) + "\n");
}
