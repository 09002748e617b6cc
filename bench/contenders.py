"""bench/contenders.py: how each contender is measured (seckill's rows, the bounded sale,
the lookups beside purchases, metrics on and off, the connection sweep, exactness, the seed's
stack, nginx), each a function of the run's `Bench` (bench/runner.py)."""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import buyer_cost
import loadgen
import lookup_cost
import pyspy
import redis
import replica_acks
import storm
from report import (
    METRICS_TOOL,
    SWEEP_TOOL,
    Exactness,
    Profile,
    Row,
    SaleRun,
)
from runner import (
    ADMIT_ITEM,
    ADMIT_STOCK,
    EXACT_AB_ITEM,
    EXACT_WRK_ITEM,
    FD_HEADROOM,
    GATEWAY_ADMIT_ITEM,
    GATEWAY_SOLD_OUT_ITEM,
    METRICS_REPEAT,
    NO_METRICS_FLAG,
    OUT_DIR,
    SALE_ITEM,
    SALE_POLL,
    SOLD_OUT_ITEM,
    WRK_LOADS,
    Arm,
    Bench,
    EvalshaCounter,
    server_max_connections,
)
from services import (
    ROOT,
    Service,
    StartError,
    admin,
    command_line,
    create_sale,
    gateway_missing,
    gateway_sale,
    http_get,
    nginx_ceiling,
    openresty_gateway,
    seckill_server,
    seed_stack,
    taskset,
)


def measure_seckill(bench: Bench, redis_url: str) -> None:
    print("seckill server (contenders a, b, e)")
    pin = bench.pin
    extra = server_limits(bench)
    with seckill_server(redis_url, bench.log_dir, pin.server, extra) as (server, port):
        bench.record_command("seckill server, 1 worker", server.command)
        base = f"http://127.0.0.1:{port}"
        create_sale(redis_url, ADMIT_ITEM, ADMIT_STOCK)
        create_sale(redis_url, SOLD_OUT_ITEM, 0)
        bench.record_command("sales (each command also takes --redis URL)", "\n".join(
            command_line(["python", "seckill_server.py", "create", item, "--stock", str(stock)])
            for item, stock in ((ADMIT_ITEM, ADMIT_STOCK), (SOLD_OUT_ITEM, 0))))
        evalsha = EvalshaCounter(redis_url)
        admit_url = f"{base}/seckill/{ADMIT_ITEM}"

        bench.series("a", "wrk", "(a) admission", admit_url, evalsha=evalsha)
        admission_metrics_off(bench, redis_url, admit_url, extra, evalsha)
        sold_out_rows(bench, "b", "(b) sold out", port, SOLD_OUT_ITEM, evalsha)
        if "sale" not in bench.args.skip:
            measure_sale(bench, base, redis_url, evalsha)
        if "ab" not in bench.args.skip:
            bench.series("a", "ab", "(a) admission, no keep-alive", admit_url, evalsha=evalsha)
        connection_sweep(bench, "a", "(a) admission", admit_url, evalsha)

        if "exact" not in bench.args.skip:
            check_exactness(bench, base, redis_url)
        if bench.args.profile:
            profile_admission(bench, server, admit_url)
    scan_server_log(bench, bench.log_dir / "seckill.log")
    scan_server_log(bench, bench.log_dir / "seckill-no-metrics.log", "the --no-metrics server")


def sold_key(item: str) -> str:
    """The Redis hash holding a sale's `sold` (sale_store's layout)."""
    try:
        from seckill.sales.sale_store import sale_key  # the server's module, at the repository root
    except Exception:  # the module mid-edit, say: its layout as documented
        return f"seckill:{{{item}}}"
    return str(sale_key(item))


class SoldWatch:
    """Reads a sale's `sold` while (f) runs; true (stop wrk) once it reaches the stock.
    Remembers the first read that saw a unit sold and the first that saw them all."""

    def __init__(self, redis_url: str, item: str, stock: int) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.key = sold_key(item)
        self.stock = stock
        self.first: tuple[float, int] | None = None  # (monotonic time, sold)
        self.full: float | None = None
        self.samples = 0

    def __call__(self) -> bool:
        sold = int(self.client.hget(self.key, "sold") or 0)
        now = time.monotonic()
        self.samples += 1
        if sold and self.first is None:
            self.first = (now, sold)
        if sold >= self.stock:
            self.full = now
            return True
        return False

    @property
    def seconds(self) -> float | None:
        """From the first read that saw a unit sold to the first that saw the stock gone."""
        if self.first is None or self.full is None:
            return None
        return self.full - self.first[0]


@contextmanager
def pinned(cpus: str | None) -> Iterator[None]:
    """This thread on `cpus` for the block (the poller of (f) keeps off the server's CPU)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure_sale(bench: Bench, base: str, redis_url: str, evalsha: EvalshaCounter) -> None:
    """(f) and (g): a sale of --sale-stock units bought by distinct users, a fresh one per
    run (--repeat). (f): wrk from the start of the sale, stopped with SIGINT as soon as
    Redis's `sold` (read every SALE_POLL s) reaches the stock; (g): then wrk for --duration
    on the sold-out sale. The rows are the median runs of each; every run is in
    findings.sale, with Redis's time to sell out."""
    stock, args = bench.args.sale_stock, bench.args
    if not bench.tools.wrk:
        for contender in ("f", "g"):
            bench.skip(contender, "wrk", "wrk not found")
        return
    # (f)'s -d, a bound it never reaches: wrk is stopped when the units are gone.
    limit = max(30.0, stock / 10_000)
    runs: list[SaleRun] = []
    for index in range(args.repeat):
        item = f"{SALE_ITEM}-{index + 1}"
        create_sale(redis_url, item, stock)
        url = f"{base}/seckill/{item}"
        which = f" [{index + 1}/{args.repeat}]" if args.repeat > 1 else ""
        bench.record_command(f"(f) and (g): a sale per run, {SALE_ITEM}-1 .. -{args.repeat} "
                             "(also takes --redis URL)", command_line(
                                 ["python", "seckill_server.py", "create", f"{SALE_ITEM}-N",
                                  "--stock", str(stock)]))
        bench.wait_quiet()
        watch = SoldWatch(redis_url, item, stock)
        argv = bench.wrk_argv(url, limit)
        before = evalsha.calls()
        with pinned(bench.pin.client):
            admission = bench.measured(
                f"(f) stock {stock:,}, until sold out (wrk stopped by SIGINT then)", "wrk", argv,
                functools.partial(loadgen.run_wrk_until, argv, limit, watch, SALE_POLL), which)
        admission_rt = evalsha.per_request(before, admission.requests)
        seconds = watch.seconds
        if watch.full is None:
            bench.note(f"(f) run {index + 1}: {stock:,} units did not sell out in {limit:g} s")
        else:
            print(f"    sold out in {seconds:.3f} s by Redis's count ({watch.samples} reads)")
        if admission.errors:
            bench.note(f"(f) run {index + 1}: {admission.errors} errors ({admission.error_detail})")
        bench.wait_quiet()
        before = evalsha.calls()
        sold_out = bench.wrk(f"(g) stock {stock:,}, sold out", url, which=which)
        sold_out_rt = evalsha.per_request(before, sold_out.requests)
        bench.check("(g) with wrk", sold_out, expect_non2xx=True)
        status = admin("status", item, redis_url)
        run = SaleRun(stock, seconds, watch.first[1] if watch.first else 0, watch.samples, admission,
                      sold_out, int(status["sold"]), int(status["orders"]), admission_rt, sold_out_rt)
        if not run.exact:
            bench.note(f"(f) run {index + 1}: Redis says sold {run.sold:,}, orders {run.orders:,} "
                       f"of a stock of {stock:,}")
        runs.append(run)
    bench.findings.sale += runs
    # (f)'s req/s is Redis's units/s: every admission request wins, and wrk's own figure
    # also counts the sold-out answers of its last <= 100 ms (it stops on its 100 ms tick).
    admissions = [dataclasses.replace(r.admission, rps=r.units_per_s or r.admission.rps) for r in runs]
    sold_outs = [r.sold_out for r in runs if r.sold_out is not None]
    for contender, results, rts in (("f", admissions, [r.admission_rt for r in runs]),
                                    ("g", sold_outs, [r.sold_out_rt for r in runs])):
        order = sorted(range(len(results)), key=lambda i: results[i].rps)
        median = order[len(order) // 2]
        bench.findings.rows.append(Row(contender, "wrk", results[median], redis_rt=rts[median],
                                       all_rps=[r.rps for r in results]))


def measure_lookup(bench: Bench, redis_url: str) -> None:
    """bench/lookup_cost.py inside the run: its own server, pinned as the rows, this Redis."""
    print("order lookups in a big sale beside purchases of another (bench/lookup_cost.py)")
    options = dataclasses.replace(lookup_cost.Options(), seconds=bench.args.lookup_seconds,
                                  rounds=bench.args.lookup_rounds,
                                  connections=bench.args.connections)
    bench.findings.lookup = lookup_cost.measure(
        redis_url, bench.log_dir, options, server_cpus=bench.pin.server,
        client_cpus=bench.pin.client, wait_quiet=bench.wait_quiet, record=bench.record_command,
        note=bench.note)


def measure_buyers(bench: Bench, redis_url: str) -> None:
    """bench/buyer_cost.py inside the run: its own servers, pinned as the rows, this Redis."""
    print("signed buyers and rate limits against the plain server (bench/buyer_cost.py)")
    options = dataclasses.replace(buyer_cost.Options(), seconds=bench.args.buyer_seconds,
                                  rounds=bench.args.buyer_rounds, connections=bench.args.connections)
    bench.findings.buyers = buyer_cost.measure(
        redis_url, bench.log_dir, options, server_cpus=bench.pin.server,
        client_cpus=bench.pin.client, wait_quiet=bench.wait_quiet, record=bench.record_command,
        note=bench.note)


def measure_replicas(bench: Bench, redis_url: str) -> None:
    """bench/replica_acks.py inside the run: its own servers and a replica of this Redis."""
    print("admission with --replica-acks 1 against 0, one replica (bench/replica_acks.py)")
    options = dataclasses.replace(replica_acks.Options(), seconds=bench.args.replica_seconds,
                                  rounds=bench.args.replica_rounds, connections=bench.args.connections)
    bench.findings.replicas = replica_acks.measure(
        redis_url, bench.log_dir, options, server_cpus=bench.pin.server, client_cpus=bench.pin.client,
        redis_cpus=bench.pin.redis, wait_quiet=bench.wait_quiet, record=bench.record_command, note=bench.note)


def measure_storm(bench: Bench, redis_url: str) -> None:
    """bench/storm.py inside the run: its own contenders, started afresh, on this Redis."""
    print("the sale-start storm (bench/storm.py)")
    options = storm.Options(bench.args.storm_connections, bench.args.storm_repeat, bench.args.nginx)
    bench.findings.storm = storm.measure(
        redis_url, bench.log_dir, bench.work_dir, options, server_cpus=bench.pin.server,
        client_cpus=bench.pin.client, wait_quiet=bench.wait_quiet, record=bench.record_command, note=bench.note)


def server_limits(bench: Bench) -> list[str]:
    """Flags the server needs for the sweep's largest point: none while its default
    --max-connections (per worker) covers it, which is what we want to measure."""
    largest = max([bench.args.connections, *bench.args.sweep])
    default = server_max_connections()
    if default is not None and default >= largest + 64:  # room for the bench's own connections
        return []
    bench.note(f"the server's default --max-connections ({default or 'unknown'}) is below "
               f"{largest} connections and the bench's own: it runs with --max-connections {largest + 64}")
    return ["--max-connections", str(largest + 64)]


def admission_metrics_off(bench: Bench, redis_url: str, admit_url: str, extra: list[str],
                          evalsha: EvalshaCounter) -> None:
    """(a) one URL, and (e): the same on a second server started with `--no-metrics`.

    The second server runs beside the first (pinned alike, same Redis, same sale) and the
    two rows' runs alternate, so the ratio on/off is not a drift of the shared machine's
    load. If the server rejects the flag (or --skip metrics), (a) is measured alone and
    (e) is a skipped row.
    """
    on = Arm("a", "(a) admission, one URL", admit_url)
    reason = "--skip metrics"
    with ExitStack() as stack:
        arms = [on]
        if "metrics" not in bench.args.skip:
            try:
                service, port = stack.enter_context(seckill_server(
                    redis_url, bench.log_dir, bench.pin.server, [*extra, NO_METRICS_FLAG],
                    log_name="seckill-no-metrics.log"))
            except (StartError, OSError) as exc:
                reason = f"the server did not start with {NO_METRICS_FLAG} ({exc})"
                print(f"  skipping (e): {reason}")
            else:
                bench.record_command("seckill server, 1 worker, metrics off (beside the first)",
                                     service.command)
                arms.append(Arm("e", f"(e) admission, one URL, {NO_METRICS_FLAG}",
                                f"http://127.0.0.1:{port}/seckill/{ADMIT_ITEM}"))
        # A 5 % question on a machine whose runs differ by a few per cent: more rounds.
        bench.findings.rows += bench.measure_rows(METRICS_TOOL, arms, evalsha=evalsha,
                                                  repeat=max(bench.args.repeat, METRICS_REPEAT))
    if len(arms) == 1:
        bench.findings.rows.append(Row("e", METRICS_TOOL, skipped=reason))


def connection_sweep(bench: Bench, contender: str, label: str, url: str,
                     evalsha: EvalshaCounter | None = None, expect_non2xx: bool = False) -> None:
    """req/s, distinct users, at each --sweep connection count (shorter runs than the main
    rows, no warm-up: the contender has just served the main rows); the count the main table
    ran at reuses the main table's row."""
    if "sweep" in bench.args.skip:
        return
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    for connections in bench.args.sweep:
        main = bench.findings.row(contender, SWEEP_TOOL)
        if connections == bench.args.connections and main is not None and main.result is not None:
            bench.findings.sweep.append(dataclasses.replace(main, connections=connections))
            continue
        if fd_limit != resource.RLIM_INFINITY and connections + FD_HEADROOM > fd_limit:
            reason = f"RLIMIT_NOFILE is {fd_limit} (the hard limit), too few for {connections} sockets"
            print(f"  skipping {label} at {connections} connections: {reason}")
            bench.findings.sweep.append(Row(contender, SWEEP_TOOL, skipped=reason,
                                            connections=connections))
            continue
        bench.findings.sweep += bench.measure_rows(
            SWEEP_TOOL, [Arm(contender, f"{label}, {connections} connections", url)],
            evalsha=evalsha, connections=connections, duration=bench.args.sweep_duration,
            repeat=bench.args.sweep_repeat, warm_up=False,  # warm: it has just served the main rows
            expect_non2xx=expect_non2xx)


def check_exactness(bench: Bench, base: str, redis_url: str) -> None:
    """Bounded stock: Redis (sold, orders) and the client (200s) must both count `stock` winners."""
    stock = bench.args.exact_stock
    if bench.tools.wrk:
        create_sale(redis_url, EXACT_WRK_ITEM, stock)
        bench.wait_quiet()
        result = bench.wrk(f"exactness, stock {stock}", f"{base}/seckill/{EXACT_WRK_ITEM}",
                           duration=bench.args.exact_seconds, count_status=not bench.args.plain_url)
        counts = [("requests − non-2xx", result.requests - result.non2xx)]
        others = f"{result.non2xx:,} non-2xx"
        if result.statuses:
            counts.insert(0, ("200s counted by users.lua", result.statuses.get(200, 0)))
            others = ", ".join(f"{n:,}× {s}" for s, n in sorted(result.statuses.items()) if s != 200)
        bench.findings.exactness.append(exactness(
            "wrk", stock, admin("status", EXACT_WRK_ITEM, redis_url), counts, others, result.errors))
    if bench.tools.ab and "ab" not in bench.args.skip:
        create_sale(redis_url, EXACT_AB_ITEM, stock)
        bench.wait_quiet()
        result = bench.ab(f"exactness, stock {stock}, no keep-alive",
                          f"{base}/seckill/{EXACT_AB_ITEM}", requests=max(3 * stock, 2000))
        counts = [("complete − non-2xx", result.requests - result.non2xx)]
        bench.findings.exactness.append(exactness(
            "ab", stock, admin("status", EXACT_AB_ITEM, redis_url), counts,
            f"{result.non2xx:,} non-2xx", result.errors))
    for check in bench.findings.exactness:
        print(f"    exactness with {check.tool}: {'pass' if check.passed else 'FAIL'} (stock "
              f"{check.stock}, sold {check.sold}, orders {check.orders}, client {check.client})")


def exactness(tool: str, stock: int, status: dict[str, Any], counts: list[tuple[str, int]],
              others: str, errors: int) -> Exactness:
    sold, orders = int(status["sold"]), int(status["orders"])
    passed = (sold == stock and orders == stock and errors == 0
              and all(count == stock for _, count in counts))
    if errors:
        others += f"; {errors} client errors"
    client = "; ".join(f"{count:,} ({how})" for how, count in counts)
    return Exactness(tool, stock, sold, orders, client, others or "none", passed)


def profile_admission(bench: Bench, server: Service, url: str) -> None:
    binary = pyspy.py_spy()
    if binary is None or not bench.tools.wrk:
        bench.note("--profile: py-spy or wrk missing, no profile")
        return
    if not pyspy.can_attach():
        bench.note("--profile: py-spy needs root (or CAP_SYS_PTRACE) to attach; no profile")
        return
    duration = bench.args.duration
    output = OUT_DIR / "profile-admission.speedscope.json"
    argv = taskset(pyspy.record_command(binary, server.pid, max(1.0, duration - 1), output,
                                        bench.args.profile_rate, bench.args.profile_native),
                   bench.pin.client)
    bench.record_command("profile of (a), alongside its wrk", argv)
    output.unlink(missing_ok=True)
    bench.wait_quiet()
    recorder = pyspy.start_recording(argv, bench.log_dir / "py-spy.log")
    try:
        result = bench.wrk("(a) admission, profiled", url)
        recorder.wait(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if not output.exists():
        bench.note(f"--profile: py-spy wrote nothing; see {bench.log_dir / 'py-spy.log'}")
        return
    summary = pyspy.summarize(output, ROOT)
    bench.findings.profile = Profile(str(output.relative_to(ROOT)), summary.samples, result.rps,
                                     bench.args.profile_native, summary.by_self,
                                     summary.own_by_total)
    text = (f"py-spy, {summary.samples} samples, top functions by self time:\n"
            + _shares(summary.by_self)
            + "\nthe server's own functions by total time (with what they call):\n"
            + _shares(summary.own_by_total))
    (OUT_DIR / "profile-admission.txt").write_text(text + "\n")
    print(f"  ({output})\n{text}")


def _shares(shares: list[pyspy.FunctionShare]) -> str:
    return "\n".join(f"  {s.self_pct:5.1f}% self {s.total_pct:5.1f}% total  {s.name}  ({s.where})"
                     for s in shares)


def scan_server_log(bench: Bench, path: Path, who: str = "the server") -> None:
    """Warnings and errors the server logged during the run are findings too."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    bad = [line for line in lines if any(w in line for w in (" WARNING ", " ERROR ", "Traceback"))]
    if bad:
        bench.note(f"{who} logged {len(bad)} warnings/errors, first: `{bad[0].strip()}`")


def measure_seed(bench: Bench, redis_url: str) -> None:
    print("seed: Flask under gunicorn -k gevent -w 4 (contender c)")
    redis.Redis.from_url(redis_url).delete("seed:limit")  # SETNX seeds it again: 95 of 100 sold
    with seed_stack(redis_url, bench.log_dir, bench.pin.server) as (service, port):
        bench.record_command("seed stack", service.command)
        url = f"http://127.0.0.1:{port}/limit"
        bench.every_load("c", "(c) seed", url)


def measure_nginx(bench: Bench) -> None:
    print("nginx return 200 (contender d)")
    if bench.tools.nginx is None:
        for tool in (*WRK_LOADS, "ab"):
            bench.skip("d", tool, f"nginx not found at {bench.args.nginx}")
        return
    with nginx_ceiling(bench.tools.nginx, bench.work_dir / "nginx", bench.log_dir,
                       bench.pin.server, largest_load(bench)) as (service, port):
        bench.record_command("nginx ceiling (config: bench/nginx.conf.template)", service.command)
        url = f"http://127.0.0.1:{port}/seckill/x"
        bench.every_load("d", "(d) nginx", url)
        connection_sweep(bench, "d", "(d) nginx", url)


def sold_out_rows(bench: Bench, key: str, what: str, port: int, item: str, evalsha: EvalshaCounter) -> None:
    """A stock-0 sale's rows (distinct users, one URL) and sweep, after a first request that
    arms the contender's sold-out gate (ours, or the gateway's shared-dict flag)."""
    status, _ = http_get(port, f"/seckill/{item}")
    if status != 409:
        bench.note(f"{what}: the first request to a stock-0 sale answered {status}, not 409")
    url = f"http://127.0.0.1:{port}/seckill/{item}"
    bench.series(key, "wrk", what, url, evalsha=evalsha, expect_non2xx=True)
    bench.series(key, "wrk1", f"{what}, one URL", url, evalsha=evalsha, expect_non2xx=True)
    connection_sweep(bench, key, what, url, evalsha, expect_non2xx=True)


def largest_load(bench: Bench) -> int:
    """The most connections any load of this run opens."""
    return int(max([bench.args.connections, *bench.args.sweep]))


def measure_openresty(bench: Bench, redis_url: str) -> None:
    """(h) and (i): the OpenResty-style gateway (bench/openresty/), on this Redis."""
    print("the OpenResty-style gateway (contenders h, i)")
    if bench.tools.nginx is None:
        why = f"nginx not found at {bench.args.nginx}"
    else:
        why = gateway_missing() or ""
    if why:
        for contender in ("h", "i"):
            for tool in WRK_LOADS:
                bench.skip(contender, tool, why)
        return
    assert bench.tools.nginx is not None
    gateway_sale(redis_url, GATEWAY_ADMIT_ITEM, ADMIT_STOCK)
    gateway_sale(redis_url, GATEWAY_SOLD_OUT_ITEM, 0)
    with openresty_gateway(bench.tools.nginx, redis_url, bench.work_dir / "openresty", bench.log_dir,
                           bench.pin.server, largest_load(bench)) as (service, port):
        bench.record_command("OpenResty-style gateway (config: bench/openresty/)", service.command)
        evalsha = EvalshaCounter(redis_url)
        admit_url = f"http://127.0.0.1:{port}/seckill/{GATEWAY_ADMIT_ITEM}"
        bench.series("h", "wrk", "(h) gateway admission", admit_url, evalsha=evalsha)
        bench.series("h", "wrk1", "(h) gateway admission, one URL", admit_url, evalsha=evalsha)
        connection_sweep(bench, "h", "(h) gateway admission", admit_url, evalsha)
        sold_out_rows(bench, "i", "(i) gateway sold out", port, GATEWAY_SOLD_OUT_ITEM, evalsha)
    errors = (bench.work_dir / "openresty" / "error.log")
    if errors.exists() and "[error]" in errors.read_text(errors="replace"):
        bench.note(f"the gateway logged errors: see {errors}")
