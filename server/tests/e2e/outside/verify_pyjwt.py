"""PyJWT's PyJWKClient as a Python service would use it: the JWKS URL found
through the RFC 8414 metadata document, the key set cached for a second.
Reads one token a line on stdin; answers `ok KID SUB` or `fail REASON`.

usage: verify_pyjwt.py METADATA_URL ISSUER AUDIENCE
"""

import json
import sys
import urllib.request

import jwt

metadata_url, issuer, audience = sys.argv[1:4]
with urllib.request.urlopen(metadata_url) as answer:
    metadata = json.load(answer)
algorithms = metadata["access_token_signing_alg_values_supported"]
keys = jwt.PyJWKClient(metadata["jwks_uri"], cache_jwk_set=True, lifespan=1)

for line in sys.stdin:
    token = line.strip()
    try:
        key = keys.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=algorithms,
            issuer=issuer,
            audience=audience,
            leeway=5,
            options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]},
        )
        print("ok", key.key_id, claims["sub"], flush=True)
    except Exception as error:  # every failure is an answer, not a crash
        print("fail", type(error).__name__, error, flush=True)
