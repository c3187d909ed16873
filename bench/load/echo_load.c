/*
 * echo_load: a closed-loop load generator for echo servers.
 *
 * Theory of operation
 * -------------------
 * CONNS connections each keep exactly one SIZE-byte message in flight: send
 * it, wait for all SIZE bytes to come back, check them, record the round
 * trip's latency, send the next.  One thread, one epoll set, level-triggered:
 * the simplest shape that a Python server cannot outrun, so the number of
 * round trips per second measures the server, not this program.
 *
 * The run has two phases.  For WARMUP seconds the load runs unmeasured (the
 * server's allocator and caches settle); then the program prints "start" on
 * stdout and measures for SECONDS seconds, prints "end", then one result
 * line.  The caller reads the server's CPU time at "start" and "end", so
 * the CPU counted is the CPU spent on the round trips counted, without
 * connection set-up or tear-down.
 *
 * The traps:
 *  - A 16-byte echo may come back in pieces; a round trip ends only when
 *    all SIZE bytes are in.  A message is never split on the way out: with
 *    one message in flight the socket's send buffer is always empty.
 *  - Latencies go into a histogram of whole microseconds (up to 1 s; longer
 *    ones are counted in the last bucket), so recording one costs no
 *    allocation and percentiles are exact to the microsecond.
 *  - A server that stops answering must not hang the benchmark: with no
 *    round trip for STALL seconds the program fails.
 *
 * Output (stdout), after "start" and "end":
 *   roundtrips=N seconds=S p50_us=A p99_us=B max_us=C cpu=F
 * where F is this program's own CPU time over the window, as a share of one
 * CPU: near 1.0 means the load generator, not the server, set the pace.
 * Exit status 0 on success, 1 on any error (message on stderr).
 *
 * Usage: echo_load HOST PORT CONNS SIZE SECONDS WARMUP [REQUEST REPLY]
 *
 * With REQUEST and REPLY (SIZE is then ignored), every connection sends the
 * bytes of REQUEST and waits for exactly the bytes of REPLY: for example
 * "PING\r\n" and "+PONG\r\n", a Redis PING with one request in flight per
 * connection, from a client that costs far less per request than
 * redis-benchmark, so the server, not the client, sets the pace.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_US 1000000 /* histogram range: 0 .. 1 s, one bucket per microsecond */
#define STALL_NS (10LL * 1000000000LL)

struct conn {
    int fd;
    int got;          /* bytes of the echo received so far */
    int64_t sent_at;  /* when the message in flight was sent (ns) */
    unsigned char *msg;  /* what is sent */
    unsigned char *want; /* what must come back: msg itself, or REPLY */
};

static int rsize; /* bytes of each reply */

static uint32_t *hist;

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static long percentile(uint64_t total, double p) {
    uint64_t want = (uint64_t)(p * (double)total + 0.5), seen = 0;
    if (want == 0) want = 1;
    for (long us = 0; us < MAX_US; us++) {
        seen += hist[us];
        if (seen >= want) return us;
    }
    return MAX_US;
}

static void send_msg(struct conn *c, int size) {
    ssize_t n = send(c->fd, c->msg, (size_t)size, MSG_NOSIGNAL);
    if (n != size) {
        if (n < 0) die("send");
        fprintf(stderr, "echo_load: short send (%zd of %d bytes)\n", n, size);
        exit(1);
    }
    c->got = 0;
    c->sent_at = now_ns();
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE SECONDS WARMUP [REQUEST REPLY]\n",
                argv[0]);
        return 2;
    }
    const char *request = argc == 9 ? argv[7] : NULL, *reply = argc == 9 ? argv[8] : NULL;
    const char *host = argv[1];
    int port = atoi(argv[2]), nconns = atoi(argv[3]), size = atoi(argv[4]);
    double seconds = atof(argv[5]), warmup = atof(argv[6]);
    if (request) size = (int)strlen(request);
    rsize = reply ? (int)strlen(reply) : size;
    if (port <= 0 || nconns <= 0 || size <= 0 || size > 4096 || rsize <= 0 || rsize > 4096 ||
        seconds <= 0 || warmup < 0) {
        fprintf(stderr, "echo_load: bad arguments\n");
        return 2;
    }
    hist = calloc(MAX_US + 1, sizeof *hist);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    unsigned char *rbuf = malloc((size_t)rsize);
    if (!hist || !conns || !rbuf) die("calloc");

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "echo_load: %s is not an IPv4 address\n", host);
        return 2;
    }
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        /* Blocking connect (loopback: immediate), then non-blocking I/O. */
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0) die("socket");
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl(c->fd, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
        c->msg = malloc((size_t)size);
        if (!c->msg) die("malloc");
        if (request)
            memcpy(c->msg, request, (size_t)size);
        else
            for (int j = 0; j < size; j++) c->msg[j] = (unsigned char)('a' + (i + j) % 26);
        c->want = reply ? (unsigned char *)reply : c->msg;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }

    struct epoll_event *evs = calloc((size_t)nconns, sizeof *evs);
    if (!evs) die("calloc");
    int64_t t0 = now_ns();
    int64_t start = t0 + (int64_t)(warmup * 1e9);
    int64_t end = start + (int64_t)(seconds * 1e9);
    int measuring = 0;
    double cpu0 = 0.0;
    uint64_t done = 0;
    int64_t last_progress = t0;
    for (int i = 0; i < nconns; i++) send_msg(&conns[i], size);

    for (;;) {
        int64_t t = now_ns();
        if (!measuring && t >= start) {
            measuring = 1;
            printf("start\n");
            fflush(stdout);
            cpu0 = cpu_seconds();
            t = now_ns();
            start = t;
            end = start + (int64_t)(seconds * 1e9);
        }
        if (t >= end) break;
        if (t - last_progress > STALL_NS) {
            fprintf(stderr, "echo_load: no echo for 10 s: the server is stuck\n");
            return 1;
        }
        int n = epoll_wait(ep, evs, nconns, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            ssize_t r = recv(c->fd, rbuf + c->got, (size_t)(rsize - c->got), 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                die("recv");
            }
            if (r == 0) {
                fprintf(stderr, "echo_load: the server closed a connection\n");
                return 1;
            }
            if (memcmp(rbuf + c->got, c->want + c->got, (size_t)r) != 0) {
                fprintf(stderr, "echo_load: the reply differs from what was expected\n");
                return 1;
            }
            c->got += (int)r;
            if (c->got < rsize) continue;
            int64_t done_at = now_ns();
            last_progress = done_at;
            if (measuring && c->sent_at >= start) {
                int64_t us = (done_at - c->sent_at) / 1000;
                hist[us < MAX_US ? us : MAX_US]++;
                done++;
            }
            send_msg(c, size);
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    double cpu = cpu_seconds() - cpu0;
    printf("end\n");
    long max_us = 0;
    for (long us = MAX_US; us >= 0; us--) {
        if (hist[us]) {
            max_us = us;
            break;
        }
    }
    printf("roundtrips=%llu seconds=%.6f p50_us=%ld p99_us=%ld max_us=%ld cpu=%.3f\n",
           (unsigned long long)done, elapsed, done ? percentile(done, 0.50) : 0,
           done ? percentile(done, 0.99) : 0, max_us, cpu / elapsed);
    fflush(stdout);
    for (int i = 0; i < nconns; i++) close(conns[i].fd);
    return 0;
}
