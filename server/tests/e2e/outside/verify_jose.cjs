// jose's createRemoteJWKSet as a Node service would use it: the JWKS URL
// found through the RFC 8414 metadata document, cached for a second. Reads
// one token a line on stdin; answers `ok KID SUB` or `fail REASON`.
//
// usage: NODE_PATH=.../node_modules node verify_jose.cjs METADATA_URL ISSUER AUDIENCE
const readline = require("node:readline");
const { createRemoteJWKSet, jwtVerify } = require("jose");

const [metadataUrl, issuer, audience] = process.argv.slice(2);

(async () => {
  const metadata = await (await fetch(metadataUrl)).json();
  const keys = createRemoteJWKSet(new URL(metadata.jwks_uri), {
    cacheMaxAge: 1000,
    cooldownDuration: 0,
  });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    try {
      const { payload, protectedHeader } = await jwtVerify(line.trim(), keys, {
        issuer,
        audience,
        typ: "at+jwt",
        algorithms: metadata.access_token_signing_alg_values_supported,
        clockTolerance: 5,
        requiredClaims: ["exp", "iat", "sub", "jti"],
      });
      console.log(`ok ${protectedHeader.kid} ${payload.sub}`);
    } catch (error) {
      console.log(`fail ${error.code || error.name} ${error.message}`);
    }
  }
})();
