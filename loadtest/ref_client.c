/*
 * ref_client: a minimal C epoll client, the yardstick for servers and for the Python tools.
 *
 * One request in flight per connection, 64-byte values; even-numbered connections write,
 * odd-numbered ones read:
 *   memcache (default): `set q 0 0 64` / `get q`, the load of `loadtest.flood` against a
 *     plain cache. A kestrelpy `get q` does not wait: an empty queue answers END at once.
 *   redis: `LPUSH q <64 B>` / `RPOP q` (RESP2), the same load on a Redis list, so a durable
 *     Redis is measured by the same client as the servers it is compared with.
 * Replies are parsed whole, however the bytes arrive, so counts are complete replies and an
 * unexpected byte stops the run instead of being counted. Latency is request sent to reply
 * read, one clock reading per epoll_wait (all replies of one wake-up share it).
 *
 * Prints one JSON line on stdout (the keys of the Python tools' reports: ops.total/set/get
 * with count, ops_per_s, latency; hits, misses, errors, client CPU). Exit 0; 1 when the
 * server sent error replies (counted in "errors", run completed); 2 when the run could not
 * be done (one line on stderr). The process's own CPU over the run is reported so a reader
 * can tell whether the client, not the server, was the limit.
 *
 *   gcc -O2 -o /tmp/ref_client loadtest/ref_client.c
 *   taskset -c 1 /tmp/ref_client PORT CONNECTIONS SECONDS [memcache|redis]
 *
 * `python -m loadtest.ref_client` builds it into a temporary directory and runs it (bench).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SIZE 64          /* value bytes */
#define BUF_BYTES 4096   /* per connection: one reply at a time, a get's is ~90 bytes */
#define MAX_LINE 1024    /* a reply line longer than this is garbage, not a slow reply */
#define HIST_US 100000   /* latency buckets of 1 us up to 100 ms, then one overflow bucket */

enum kind { NEED_MORE = 0, OK, HIT, MISS, ERR };

struct conn {
    int fd;
    int writer;   /* 1: set / LPUSH; 0: get / RPOP */
    int len;      /* bytes of the pending reply in buf */
    double sent;  /* when the request in flight was sent */
    char buf[BUF_BYTES];
};

static unsigned hist[HIST_US + 1];
static double lat_max, lat_sum;
static char first_error[96];

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ref_client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu_now(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

static int starts(const char *b, int n, const char *prefix) {
    int k = (int)strlen(prefix);
    return n >= k && memcmp(b, prefix, k) == 0;
}

/* Length of the line ending in \r\n at the start of b, 0 if incomplete, -1 if too long. */
static int line_len(const char *b, int n) {
    const char *eol = memmem(b, n, "\r\n", 2);
    if (eol == NULL)
        return n > MAX_LINE ? -1 : 0;
    return (int)(eol - b) + 2;
}

/* memcache: the first complete reply in b; returns its length (kind set), 0 to wait, -1. */
static int memcache_reply(const char *b, int n, enum kind *kind) {
    int line = line_len(b, n);
    if (line <= 0)
        return line;
    if (starts(b, line, "VALUE ")) {
        char head[MAX_LINE + 1];
        unsigned flags;
        int bytes = -1;
        memcpy(head, b, line - 2);
        head[line - 2] = 0;
        if (sscanf(head, "VALUE %*s %u %d", &flags, &bytes) != 2 || bytes < 0)
            return -1;
        int whole = line + bytes + 7; /* data, \r\n, END\r\n */
        if (n < whole)
            return whole > BUF_BYTES ? -1 : 0;
        if (memcmp(b + line + bytes, "\r\nEND\r\n", 7) != 0)
            return -1;
        *kind = HIT;
        return whole;
    }
    if (line == 5 && starts(b, line, "END\r\n"))
        *kind = MISS;
    else if (line == 8 && starts(b, line, "STORED\r\n"))
        *kind = OK;
    else if (starts(b, line, "SERVER_ERROR") || starts(b, line, "CLIENT_ERROR") ||
             starts(b, line, "ERROR") || starts(b, line, "NOT_STORED"))
        *kind = ERR;
    else
        return -1;
    return line;
}

/* RESP2: `:N` (LPUSH), `$N` + data or `$-1` / `*-1` (RPOP), `-ERR ...`; as memcache_reply. */
static int redis_reply(const char *b, int n, enum kind *kind) {
    int line = line_len(b, n);
    if (line <= 0)
        return line;
    switch (b[0]) {
    case ':':
    case '+':
        *kind = OK;
        return line;
    case '-':
        *kind = ERR;
        return line;
    case '_': /* RESP3 null, should a server default to it */
        *kind = MISS;
        return line;
    case '*':
        if (atoi(b + 1) >= 0)
            return -1; /* an array is not an answer to LPUSH or RPOP */
        *kind = MISS;
        return line;
    case '$': {
        int bytes = atoi(b + 1);
        if (bytes < 0) {
            *kind = MISS;
            return line;
        }
        int whole = line + bytes + 2;
        if (n < whole)
            return whole > BUF_BYTES ? -1 : 0;
        if (memcmp(b + line + bytes, "\r\n", 2) != 0)
            return -1;
        *kind = HIT;
        return whole;
    }
    }
    return -1;
}

static void record_latency(double seconds) {
    long us = (long)(seconds * 1e6);
    hist[us < 0 ? 0 : us > HIST_US ? HIST_US : us]++;
    lat_sum += seconds;
    if (seconds > lat_max)
        lat_max = seconds;
}

/* Nearest-rank percentile in ms from the 1 us buckets (the bucket's upper edge). */
static double percentile_ms(long count, double q) {
    long rank = (long)(q * count + 0.999999), seen = 0;
    if (rank < 1)
        rank = 1;
    for (int us = 0; us <= HIST_US; us++) {
        seen += hist[us];
        if (seen >= rank)
            return us >= HIST_US ? lat_max * 1e3 : (us + 1) / 1e3;
    }
    return lat_max * 1e3;
}

static void note_error(const char *b, int n) {
    if (first_error[0])
        return;
    int k = 0;
    for (int i = 0; i < n && b[i] != '\r' && k < (int)sizeof first_error - 1; i++)
        first_error[k++] = (b[i] >= 32 && b[i] < 127 && b[i] != '"' && b[i] != '\\') ? b[i] : '?';
    first_error[k] = 0;
}

static int open_conn(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a))
        die("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(s, F_SETFL, O_NONBLOCK);
    return s;
}

static void send_all(struct conn *c, const char *req, int len, double t) {
    /* a request of < 200 bytes into a socket with nothing else unsent: all or an error */
    if (send(c->fd, req, len, MSG_NOSIGNAL) != len)
        die("send: %s", strerror(errno));
    c->sent = t;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s PORT CONNECTIONS SECONDS [memcache|redis]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]);
    double seconds = atof(argv[3]);
    const char *protocol = argc == 5 ? argv[4] : "memcache";
    int redis = strcmp(protocol, "redis") == 0;
    if (!redis && strcmp(protocol, "memcache") != 0)
        die("unknown protocol %s (memcache or redis)", protocol);
    if (port <= 0 || port > 65535 || n <= 0 || seconds <= 0)
        die("PORT, CONNECTIONS and SECONDS must be positive");

    char body[SIZE + 1], write_req[256], read_req[64];
    memset(body, 'x', SIZE);
    body[SIZE] = 0;
    int write_len, read_len;
    if (redis) {
        write_len = snprintf(write_req, sizeof write_req,
                             "*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$%d\r\n%s\r\n", SIZE, body);
        read_len = snprintf(read_req, sizeof read_req, "*2\r\n$4\r\nRPOP\r\n$1\r\nq\r\n");
    } else {
        write_len = snprintf(write_req, sizeof write_req, "set q 0 0 %d\r\n%s\r\n", SIZE, body);
        read_len = snprintf(read_req, sizeof read_req, "get q\r\n");
    }
    int (*parse)(const char *, int, enum kind *) = redis ? redis_reply : memcache_reply;

    int ep = epoll_create1(0);
    struct conn *conns = calloc(n, sizeof *conns);
    if (ep < 0 || conns == NULL)
        die("out of resources");
    for (int i = 0; i < n; i++) {
        conns[i].fd = open_conn(port);
        conns[i].writer = i % 2 == 0;
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &e))
            die("epoll_ctl: %s", strerror(errno));
    }

    long count[2] = {0, 0}, hits = 0, misses = 0, errors = 0; /* count[writer] */
    double cpu_start = cpu_now(), start = now(), end = start + seconds, t = start;
    for (int i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        send_all(c, c->writer ? write_req : read_req, c->writer ? write_len : read_len, start);
    }
    struct epoll_event events[1024];
    while (t < end) {
        int k = epoll_wait(ep, events, 1024, 100);
        if (k < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        t = now();
        for (int j = 0; j < k; j++) {
            struct conn *c = &conns[events[j].data.u32];
            ssize_t got = recv(c->fd, c->buf + c->len, BUF_BYTES - c->len, 0);
            if (got == 0)
                die("the server closed connection %u", events[j].data.u32);
            if (got < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    continue;
                die("recv: %s", strerror(errno));
            }
            c->len += (int)got;
            enum kind kind = NEED_MORE;
            int used = parse(c->buf, c->len, &kind);
            if (used < 0 || (used > 0 && used != c->len)) {
                note_error(c->buf, c->len);
                die("unexpected reply on a %s connection: %s", c->writer ? "write" : "read",
                    first_error);
            }
            if (used == 0)
                continue; /* the rest of this reply is still on its way */
            if (kind == ERR) {
                errors++;
                note_error(c->buf, c->len);
            } else if (!c->writer) {
                hits += kind == HIT;
                misses += kind == MISS;
            }
            count[c->writer]++;
            record_latency(t - c->sent);
            c->len = 0;
            if (t < end)
                send_all(c, c->writer ? write_req : read_req, c->writer ? write_len : read_len, t);
        }
    }
    double elapsed = now() - start, cpu = cpu_now() - cpu_start;
    long total = count[0] + count[1];
    printf("{\"tool\": \"ref_client\", \"protocol\": \"%s\", \"connections\": %d, "
           "\"size\": %d, \"seconds\": %.3f, \"ok\": %s, \"ops\": {"
           "\"set\": {\"count\": %ld, \"ops_per_s\": %.1f}, "
           "\"get\": {\"count\": %ld, \"ops_per_s\": %.1f}, "
           "\"total\": {\"count\": %ld, \"ops_per_s\": %.1f, \"latency\": {\"count\": %ld, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f, "
           "\"mean_ms\": %.4f}}}, "
           "\"hits\": %ld, \"misses\": %ld, \"errors\": %ld, \"first_error\": \"%s\", "
           "\"client_cpu_s\": %.3f, \"client_cpu_percent\": %.1f}\n",
           protocol, n, SIZE, elapsed, errors ? "false" : "true", count[1], count[1] / elapsed,
           count[0], count[0] / elapsed, total, total / elapsed, total,
           total ? percentile_ms(total, 0.5) : 0.0, total ? percentile_ms(total, 0.99) : 0.0,
           total ? percentile_ms(total, 0.999) : 0.0, lat_max * 1e3,
           total ? lat_sum / total * 1e3 : 0.0, hits, misses, errors, first_error, cpu,
           100.0 * cpu / elapsed);
    return errors ? 1 : 0;
}
