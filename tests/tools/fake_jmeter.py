"""Stands in for `jmeter -n -t plan.jmx -l results.jtl`: sends GETs to the booted app, writes a JTL.

    python tests/tools/fake_jmeter.py URL JTL [REQUESTS] [EXIT_CODE]
"""

import sys
import time
import urllib.request

url, jtl = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
exit_code = int(sys.argv[4]) if len(sys.argv) > 4 else 0
if exit_code:
    print("fake jmeter: simulated failure, bad plan", file=sys.stderr)
    raise SystemExit(exit_code)
with open(jtl, "w") as out:
    out.write("timeStamp,elapsed,label,responseCode,responseMessage,threadName,dataType,success,failureMessage,"
              "bytes,sentBytes,grpThreads,allThreads,URL,Latency,IdleTime,Connect\n")
    for i in range(n):
        start = time.time()
        with urllib.request.urlopen(url + "/fast", timeout=10) as r:
            r.read()
            code = r.status
        elapsed = int((time.time() - start) * 1000)
        out.write(
            f"{int(start * 1000)},{elapsed},fast,{code},OK,Thread Group "
            f"1-1,text,true,,20,100,1,1,{url}/fast,{elapsed},0,0\n"
        )
