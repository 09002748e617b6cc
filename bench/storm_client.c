/* bench/storm_client.c: the sale-start storm's client (bench/storm.py builds and runs it).
 *
 *   storm_client PORT CONNECTIONS PATH_PREFIX [TIMEOUT_SECONDS]
 *
 * Opens CONNECTIONS keep-alive connections to 127.0.0.1:PORT and leaves them idle; prints
 * "ready" once every one is established, then waits for a line on stdin. At that line (T0)
 * it writes one request on every connection, `GET PATH_PREFIX<i> HTTP/1.1` (i = 0..C-1: a
 * distinct buyer each), as fast as it can, and reads every answer (Content-Length or
 * chunked). Prints one JSON line: time from T0 to the last answer, latency percentiles
 * (from T0: how long after the sale opened each buyer had an answer), status counts,
 * connections that failed or timed out, and this process's own CPU time over the storm,
 * so a reader can tell whether the client was the limit.
 *
 * One thread and epoll: C on purpose, so that the client costs far less per request than
 * any contender (a Python client was the limit of the first look at this storm).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 2048            /* an answer's head and body: ours are ~250 bytes */
#define CONNECT_WAVE 500    /* connects in flight at once: below the listen backlog */

struct conn {
    int fd;
    int state;              /* 0 connecting, 1 idle, 2 sent, 3 answered, 4 failed */
    int len;
    int status;
    double done_ms;
    char buf[BUF];
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* 1 when buf holds one whole answer (status line, head, body), -1 when it cannot be one. */
static int complete(struct conn *c) {
    c->buf[c->len] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end) return c->len >= BUF - 1 ? -1 : 0;
    if (c->status == 0 && sscanf(c->buf, "HTTP/1.%*d %d", &c->status) != 1) return -1;
    char *body = end + 4;
    int have = c->len - (int)(body - c->buf);
    char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    if (cl && cl < end) return have >= atoi(cl + 17) ? 1 : 0;
    char *te = strcasestr(c->buf, "\r\ntransfer-encoding: chunked");
    if (te && te < end) return memmem(body, have, "0\r\n\r\n", 5) != NULL ? 1 : 0;
    return 1; /* no body */
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: storm_client PORT CONNECTIONS PATH_PREFIX [TIMEOUT_SECONDS]\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]);
    const char *prefix = argv[3];
    double timeout_ms = (argc > 4 ? atof(argv[4]) : 30.0) * 1e3;
    if (port <= 0 || n <= 0) {
        fprintf(stderr, "storm_client: PORT and CONNECTIONS must be positive\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a connection reset while idle fails its write, not us */
    struct conn *conns = calloc(n, sizeof *conns);
    int ep = epoll_create1(0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    struct epoll_event *events = calloc(n, sizeof *events);

    /* Connect in waves, each established before the next, so no SYN is dropped. */
    int established = 0, failed = 0;
    for (int start = 0; start < n; start += CONNECT_WAVE) {
        int stop = start + CONNECT_WAVE < n ? start + CONNECT_WAVE : n, pending = 0;
        for (int i = start; i < stop; i++) {
            struct conn *c = &conns[i];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (c->fd < 0) { perror("storm_client: socket"); return 2; }
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
                c->state = 4; failed++; continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            pending++;
        }
        double deadline = now_ms() + 10e3;
        while (pending > 0 && now_ms() < deadline) {
            int got = epoll_wait(ep, events, n, 100);
            for (int k = 0; k < got; k++) {
                struct conn *c = &conns[events[k].data.u32];
                if (c->state != 0) continue;
                int err = 0; socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                if (err) { c->state = 4; failed++; } else { c->state = 1; established++; }
                pending--;
            }
        }
        for (int i = start; i < stop; i++)
            if (conns[i].state == 0) { conns[i].state = 4; failed++; }
    }
    printf("ready %d %d\n", established, failed);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;

    /* The storm: a request on every idle connection, then every answer. */
    double cpu0 = cpu_ms(), t0 = now_ms();
    char req[512];
    int sent = 0;
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        if (c->state != 1) continue;
        int len = snprintf(req, sizeof req, "GET %s%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", prefix, i);
        if (write(c->fd, req, len) != len) { c->state = 4; failed++; continue; }
        c->state = 2; sent++;
    }
    double sent_ms = now_ms() - t0;
    int answered = 0, closed = 0, open = sent;
    double resolved_ms = 0; /* when the last connection was answered or closed */
    while (open > 0 && now_ms() - t0 < timeout_ms) {
        int got = epoll_wait(ep, events, n, 50);
        for (int k = 0; k < got; k++) {
            struct conn *c = &conns[events[k].data.u32];
            if (c->state != 2) continue;
            ssize_t r = BUF - 1 - c->len > 0 ? read(c->fd, c->buf + c->len, BUF - 1 - c->len) : 0;
            int whole;
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                whole = -1; /* closed (or an answer larger than BUF) */
            } else {
                c->len += (int)r;
                whole = complete(c);
            }
            if (whole != 0) {
                /* Out of the epoll set, still open: no spinning on a resolved socket, and
                   nothing closed under the contender while the storm goes on. */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->state = whole > 0 ? 3 : 4;
                c->done_ms = resolved_ms = now_ms() - t0;
                if (whole > 0) answered++; else closed++;
                open--;
            }
        }
    }
    double all_in_ms = now_ms() - t0, cpu_used = cpu_ms() - cpu0;

    double *lat = calloc(answered ? answered : 1, sizeof *lat);
    int statuses[600] = {0}, m = 0;
    for (int i = 0; i < n; i++) {
        if (conns[i].state != 3) continue;
        lat[m++] = conns[i].done_ms;
        if (conns[i].status > 0 && conns[i].status < 600) statuses[conns[i].status]++;
    }
    qsort(lat, m, sizeof *lat, cmp_double);
    /* Every answer in: when the last connection was resolved, or the timeout if some never were. */
    double last = open > 0 ? all_in_ms : resolved_ms;
    int p99 = m ? (99 * m + 99) / 100 - 1 : 0; /* nearest rank: ceil(0.99 m) - 1 */
    printf("{\"connections\": %d, \"established\": %d, \"sent\": %d, \"answered\": %d, "
           "\"failed\": %d, \"closed\": %d, \"unanswered\": %d, \"send_ms\": %.3f, "
           "\"all_in_ms\": %.3f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
           "\"client_cpu_ms\": %.3f, \"statuses\": {",
           n, established, sent, answered, failed, closed, open, sent_ms, last,
           m ? lat[m / 2] : 0.0, m ? lat[p99] : 0.0, m ? lat[m - 1] : 0.0, cpu_used);
    const char *sep = "";
    for (int s = 0; s < 600; s++)
        if (statuses[s]) { printf("%s\"%d\": %d", sep, s, statuses[s]); sep = ", "; }
    printf("}}\n");
    return 0;
}
