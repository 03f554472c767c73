#!/usr/bin/env python3
"""Prints an S3 SigV4 presigned URL (GET, or PUT with METHOD=PUT in the environment) (query-string auth), so a load tool can read from S3 without signing
each request. The Range header is not signed, so one URL serves every range.

usage: presign.py ENDPOINT BUCKET KEY ACCESS SECRET [REGION] [EXPIRES]
"""
import datetime
import hashlib
import hmac
import os
import sys
import urllib.parse


def presign(endpoint, bucket, key, access, secret, region="us-east-1", expires=86400, method="GET"):
    u = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{region}/s3/aws4_request"
    path = "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/-_.~")
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical = "\n".join([method, path, query, f"host:{u.netloc}", "", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])

    def mac(k, m):
        return hmac.new(k, m.encode(), hashlib.sha256).digest()

    k = mac(mac(mac(mac(("AWS4" + secret).encode(), day), region), "s3"), "aws4_request")
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{u.scheme}://{u.netloc}{path}?{query}&X-Amz-Signature={sig}"


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) < 5:
        sys.exit(__doc__)
    region = a[5] if len(a) > 5 else "us-east-1"
    expires = int(a[6]) if len(a) > 6 else 86400
    print(presign(*a[:5], region, expires, os.environ.get("METHOD", "GET")))
