"""A second opinion on the Introspect figures, from a load generator nobody
on the project wrote: grpcio (gRPC's C core, its own HTTP/2 and HPACK).
Run by scripts/outside-bench.sh, which starts the server and a client.

Closed loop: PROCESSES processes, each with CONCURRENCY calls in flight over
CHANNELS connections. Workloads run in turn, in a different order each
round; each figure is the median over the rounds with [min..max], and the
ratios are taken within a round. Server CPU a call is read from
/proc/<pid>/stat around each window.
"""

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time

import grpc

PROCESSES = 2
CONCURRENCY = 32
CHANNELS = 2


def varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field (a string or a message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def first_string(message):
    """Field 1 of a message whose field 1 is a string (IssueResponse)."""
    assert message[0] == 0x0A, message[:8]
    length, at, shift = 0, 1, 0
    while True:
        byte = message[at]
        length |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return message[at : at + length].decode()


def issue_request(client, secret):
    grant = field(1, client.encode()) + field(2, secret.encode())
    return field(2, grant)


def channel(addr):
    # A connection of its own, not one shared through the global pool.
    return grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])


async def issue_tokens(addr, client, secret, count):
    ch = channel(addr)
    issue = ch.unary_unary("/tessera.v1.TokenService/Issue")
    request = issue_request(client, secret)
    tokens = []

    async def worker(n):
        for _ in range(n):
            tokens.append(first_string(await issue(request)))

    per = count // CONCURRENCY + 1
    await asyncio.gather(*[worker(per) for _ in range(CONCURRENCY)])
    await ch.close()
    return tokens


async def drive(args, workload, requests, seconds):
    """Calls made in `seconds`, every answer checked."""
    channels = [channel(args.addr) for _ in range(CHANNELS)]
    for ch in channels:
        await ch.channel_ready()
    bearer = (("authorization", "Bearer " + args.bearer),)
    method, metadata, check = {
        "health": ("/grpc.health.v1.Health/Check", None, b"\x08\x01"),
        "cycled": ("/tessera.v1.TokenService/Introspect", bearer, b"\x08\x01"),
        "new": ("/tessera.v1.TokenService/Introspect", bearer, b"\x08\x01"),
        "issue": ("/tessera.v1.TokenService/Issue", None, b"\x0a"),
    }[workload]
    calls = [ch.unary_unary(method) for ch in channels]
    done = 0
    stop = time.monotonic() + seconds

    async def worker(i):
        nonlocal done
        call = calls[i % CHANNELS]
        k = i
        while time.monotonic() < stop:
            if workload == "new" and k >= len(requests):
                raise SystemExit("out of never-seen tokens: issue more before the run")
            answer = await call(requests[k % len(requests)], metadata=metadata)
            assert answer.startswith(check), (workload, answer[:16])
            k += CONCURRENCY
            done += 1

    await asyncio.gather(*[worker(i) for i in range(CONCURRENCY)])
    for ch in channels:
        await ch.close()
    return done


def child(args, workload, requests, seconds, results):
    results.put(asyncio.run(drive(args, workload, requests, seconds)))


def server_cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(args, workload, per_process):
    """One window: rps and server CPU microseconds a call."""
    results = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(
            target=child, args=(args, workload, per_process[p], args.seconds, results)
        )
        for p in range(PROCESSES)
    ]
    before = server_cpu(args.pid)
    for p in processes:
        p.start()
    calls = sum(results.get() for _ in processes)
    for p in processes:
        p.join()
    cpu = server_cpu(args.pid) - before
    return calls / args.seconds, cpu * 1e6 / calls


def spread(values):
    return f"[{min(values):.2f}..{max(values):.2f}]"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    # Tokens issued by the server: one bearer, 1,000 to cycle, and enough
    # never introspected for every "new" window (each used once).
    fresh_count = int(args.seconds * 16_000) * args.rounds
    tokens = asyncio.run(issue_tokens(args.addr, args.client, args.secret, 1_001 + fresh_count))
    args.bearer = tokens[0]
    cycled = [field(1, t.encode()) for t in tokens[1:1_001]]
    fresh = [field(1, t.encode()) for t in tokens[1_001:]]
    issue = [issue_request(args.client, args.secret)]

    workloads = ["health", "cycled", "new", "issue"]
    rps = {w: [] for w in workloads}
    cpu = {w: [] for w in workloads}
    per_round = len(fresh) // args.rounds
    for r in range(args.rounds):
        # Each process gets its own slice of this round's fresh tokens.
        mine = fresh[r * per_round : (r + 1) * per_round]
        slices = [mine[p::PROCESSES] for p in range(PROCESSES)]
        requests = {
            "health": [[b""]] * PROCESSES,
            "cycled": [cycled] * PROCESSES,
            "new": slices,
            "issue": [issue] * PROCESSES,
        }
        for k in range(len(workloads)):
            w = workloads[(k + r) % len(workloads)]
            got_rps, got_cpu = window(args, w, requests[w])
            rps[w].append(got_rps)
            cpu[w].append(got_cpu)

    print(
        f"grpcio {grpc.__version__}: {PROCESSES} processes x {CONCURRENCY} calls in flight over "
        f"{CHANNELS} connections each; {args.rounds} rounds of {args.seconds:g} s windows, interleaved"
    )
    names = {
        "health": "grpc.health.v1.Health/Check (baseline)",
        "cycled": "Introspect, 1,000 tokens cycled",
        "new": "Introspect, every token new",
        "issue": "Issue, client credentials",
    }
    for w in workloads:
        line = (
            f"  {names[w]:<40} {statistics.median(rps[w]):>8.0f} rps "
            f"[{min(rps[w]):.0f}..{max(rps[w]):.0f}]  server cpu {statistics.median(cpu[w]):6.1f} us/call"
        )
        if w != "health":
            ratios = [a / b for a, b in zip(rps[w], rps["health"])]
            line += f"  = {statistics.median(ratios):.2f}x health {spread(ratios)}"
        print(line)


if __name__ == "__main__":
    main()
