/*
 * fanout_client: many WebSocket clients in one epoll loop, cheap enough to read 100k+ frames/s
 * on one core (a Python websockets client cannot: it would measure itself, not the server).
 *
 * Usage: fanout_client HOST PORT PATH NCONN NCOLL [NOLAT [TOKENS]]
 *   PATH  request path without collection, e.g. "/api/realtime?db=bench&auth=<jwt>"
 *   connection i subscribes to collection "c<i % NCOLL>".
 *   NOLAT=1: do not compute latencies (frames carry stale timestamps, e.g. the bare loop).
 *   TOKENS: a file of JWTs, one per line: connection i appends "&auth=<line i % lines>" to PATH
 *   (a user per connection, for access-policy cases).
 * FANOUT_CLIENT_PROTOCOL=nchan (environment): the peer server's protocol instead of ours. PATH is a
 *   template where "{c}" stands for the collection number (e.g. "/sub/c{c}"), no SUBSCRIBE is
 *   sent, a connection counts as subscribed once its handshake completes, and every text frame is
 *   one event (a message whose JSON has "sent").
 * Prints "READY <n>" once all connections are subscribed, "P <events> <frames> <closed>" every
 * 0.5 s, and on SIGTERM/SIGINT a final JSON line with counts and latency percentiles.
 * Latency of an event = receive wall time - the "sent" field (unix seconds) inside its record.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSED };

typedef struct {
    int fd;
    int state;
    int coll;
    int subscribed;
    char *buf;
    size_t len, cap;
} conn_t;

#define NBUCKET 200000 /* 0.05 ms buckets up to 10 s */
static uint64_t hist[NBUCKET + 1];
static double lat_max = 0, lat_sum = 0;
static uint64_t lat_n = 0;
static uint64_t events = 0, frames = 0, closed_n = 0, subscribed_n = 0, errors_n = 0, sub_failed_n = 0;
static uint64_t close_codes[5000];
static double first_ev = 0, last_ev = 0;
static volatile sig_atomic_t stop_flag = 0;
static int nolat = 0;
static int nchan_mode = 0; /* FANOUT_CLIENT_PROTOCOL=nchan */

static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void send_masked(int fd, int opcode, const char *payload, size_t n) {
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = 0x80 | opcode;
    if (n < 126) hdr[h++] = 0x80 | n;
    else { hdr[h++] = 0x80 | 126; hdr[h++] = n >> 8; hdr[h++] = n & 0xff; }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(hdr + h, mask, 4); h += 4;
    char *out = malloc(h + n);
    memcpy(out, hdr, h);
    for (size_t i = 0; i < n; i++) out[h + i] = payload[i] ^ mask[i & 3];
    ssize_t w = write(fd, out, h + n);
    (void)w;
    free(out);
}

static void on_text(conn_t *c, const char *p, size_t n) {
    if (!nchan_mode) {  /* ours: setup replies, then EVENT frames; nchan's frames are all events */
        if (!c->subscribed) {
            if (memmem(p, n, "\"SUBSCRIBED\"", 12)) { c->subscribed = 1; subscribed_n++; return; }
            /* a refused SUBSCRIBE: done with this connection's setup (counted, not retried) */
            if (memmem(p, n, "\"ERROR\"", 7)) { errors_n++; c->subscribed = -1; sub_failed_n++; return; }
        }
        if (!memmem(p, n < 40 ? n : 40, "\"EVENT\"", 7)) {
            if (memmem(p, n, "\"ERROR\"", 7)) errors_n++;
            return;
        }
    }
    frames++;
    double t = nolat ? 0 : now_wall();
    const char *q = p, *end = p + n;
    uint64_t k = 0;
    while ((q = memmem(q, end - q, "\"sent\":", 7)) != NULL) {
        q += 7;
        k++;
        if (!nolat) {
            double sent = strtod(q, NULL);
            double lat = t - sent;
            if (lat < 0) lat = 0;
            size_t b = (size_t)(lat / 0.00005);
            if (b > NBUCKET) b = NBUCKET;
            hist[b]++;
            lat_sum += lat; lat_n++;
            if (lat > lat_max) lat_max = lat;
        }
    }
    if (k == 0) k = 1;
    events += k;
    double m = now_mono();
    if (first_ev == 0) first_ev = m;
    last_ev = m;
}

static void do_close(int ep, conn_t *c) {
    if (c->state == ST_CLOSED) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = ST_CLOSED;
    closed_n++;
}

/* parse complete frames in c->buf */
static void parse_frames(int ep, conn_t *c) {
    size_t off = 0;
    unsigned char *b = (unsigned char *)c->buf;
    while (c->len - off >= 2) {
        unsigned op = b[off] & 0x0f;
        uint64_t plen = b[off + 1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (c->len - off < 4) break;
            plen = ((uint64_t)b[off + 2] << 8) | b[off + 3];
            h = 4;
        } else if (plen == 127) {
            if (c->len - off < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | b[off + 2 + i];
            h = 10;
        }
        if (c->len - off < h + plen) {
            if (h + plen > c->cap) {
                c->cap = h + plen + 1024;
                /* keep what we have: move to front first */
                memmove(c->buf, c->buf + off, c->len - off);
                c->len -= off;
                c->buf = realloc(c->buf, c->cap);
                return;
            }
            break;
        }
        const char *payload = c->buf + off + h;
        if (op == 1) on_text(c, payload, plen);
        else if (op == 9) send_masked(c->fd, 10, payload, plen);
        else if (op == 8) {
            unsigned code = plen >= 2 ? ((unsigned char)payload[0] << 8 | (unsigned char)payload[1]) : 1005;
            if (code < 5000) close_codes[code]++;
            do_close(ep, c);
            return;
        }
        off += h + plen;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT PATH NCONN NCOLL [NOLAT]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    const char *path = argv[3];
    int nconn = atoi(argv[4]);
    int ncoll = atoi(argv[5]);
    nolat = argc > 6 && atoi(argv[6]) == 1;
    const char *protocol = getenv("FANOUT_CLIENT_PROTOCOL");
    nchan_mode = protocol && strcmp(protocol, "nchan") == 0;
    char **tokens = NULL;
    int ntokens = 0;
    if (argc > 7) {
        FILE *tf = fopen(argv[7], "r");
        if (!tf) { perror("tokens"); return 2; }
        char line[4096];
        int cap = 0;
        while (fgets(line, sizeof line, tf)) {
            line[strcspn(line, "\r\n")] = 0;
            if (!line[0]) continue;
            if (ntokens == cap) { cap = cap ? cap * 2 : 1024; tokens = realloc(tokens, cap * sizeof *tokens); }
            tokens[ntokens++] = strdup(line);
        }
        fclose(tf);
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    int ep = epoll_create1(0);
    conn_t *conns = calloc(nconn, sizeof(conn_t));
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    struct epoll_event evs[1024];
    int started = 0, ready_printed = 0;
    double last_progress = now_mono();
    const int batch = 200;

    while (!stop_flag) {
        /* open connections in batches so the listen backlog never overflows */
        int pending = 0;
        for (int i = 0; started < nconn && i < started; i++)
            if (conns[i].state == ST_CONNECTING || conns[i].state == ST_HANDSHAKE ||
                (conns[i].state == ST_OPEN && !conns[i].subscribed)) pending++;
        while (started < nconn && pending < batch) {
            conn_t *c = &conns[started];
            c->coll = started % ncoll;
            c->cap = 4096;
            c->buf = malloc(c->cap);
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            connect(c->fd, (struct sockaddr *)&addr, sizeof addr);
            c->state = ST_CONNECTING;
            struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
            started++;
            pending++;
        }
        if (!ready_printed && started == nconn &&
            subscribed_n + sub_failed_n + closed_n >= (uint64_t)nconn) {
            printf("READY %llu %llu\n", (unsigned long long)subscribed_n,
                   (unsigned long long)sub_failed_n);
            fflush(stdout);
            ready_printed = 1;
        }
        int n = epoll_wait(ep, evs, 1024, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->state == ST_CLOSED) continue;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) {
                do_close(ep, c);
                continue;
            }
            if (c->state == ST_CONNECTING && (evs[i].events & EPOLLOUT)) {
                char req[8192], target[4096];
                const char *auth = ntokens ? tokens[(c - conns) % ntokens] : NULL;
                const char *slot = nchan_mode ? strstr(path, "{c}") : NULL;
                if (slot)  /* the channel of this connection's collection */
                    snprintf(target, sizeof target, "%.*s%d%s", (int)(slot - path), path, c->coll,
                             slot + 3);
                else
                    snprintf(target, sizeof target, "%s", path);
                int rl2 = snprintf(req, sizeof req,
                    "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    target, auth ? "&auth=" : "", auth ? auth : "", host, port);
                if (write(c->fd, req, rl2) != rl2) { do_close(ep, c); continue; }
                c->state = ST_HANDSHAKE;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
                continue;
            }
            if (!(evs[i].events & EPOLLIN)) continue;
            for (;;) {
                if (c->cap - c->len < 1024) {
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (r < 0) {
                    if (errno == EAGAIN) break;
                    do_close(ep, c);
                    break;
                }
                if (r == 0) { do_close(ep, c); break; }
                c->len += r;
                if (c->state == ST_HANDSHAKE) {
                    char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
                    if (!e) continue;
                    if (!memmem(c->buf, e - c->buf, " 101 ", 5)) {
                        errors_n++;
                        do_close(ep, c);
                        break;
                    }
                    size_t hl = e + 4 - c->buf;
                    memmove(c->buf, c->buf + hl, c->len - hl);
                    c->len -= hl;
                    c->state = ST_OPEN;
                    if (nchan_mode) {  /* subscribed by the handshake itself */
                        c->subscribed = 1;
                        subscribed_n++;
                    } else {
                        char sub[128];
                        int sl = snprintf(sub, sizeof sub,
                            "{\"type\":\"SUBSCRIBE\",\"collection\":\"c%d\"}", c->coll);
                        send_masked(c->fd, 1, sub, sl);
                    }
                }
                parse_frames(ep, c);
                if (c->state == ST_CLOSED) break;
            }
        }
        double m = now_mono();
        if (m - last_progress >= 0.5) {
            printf("P %llu %llu %llu\n", (unsigned long long)events, (unsigned long long)frames,
                   (unsigned long long)closed_n);
            fflush(stdout);
            last_progress = m;
        }
    }
    /* percentiles */
    double p[3] = {0.5, 0.99, 0.999};
    double pv[3] = {0, 0, 0};
    uint64_t acc = 0;
    int pi = 0;
    for (int b = 0; b <= NBUCKET && pi < 3; b++) {
        acc += hist[b];
        while (pi < 3 && lat_n && acc >= (uint64_t)(p[pi] * lat_n)) {
            pv[pi] = (b + 1) * 0.05; /* ms, bucket upper edge */
            pi++;
        }
    }
    double span = last_ev - first_ev;
    /* subscribed connections per collection, so the caller can compute expected deliveries */
    int *subs = calloc(ncoll, sizeof(int));
    for (int i = 0; i < started; i++)
        if (conns[i].subscribed == 1) subs[conns[i].coll]++;
    printf("S");
    for (int j = 0; j < ncoll; j++) printf(" %d", subs[j]);
    printf("\n");
    printf("{\"events\":%llu,\"frames\":%llu,\"subscribed\":%llu,\"closed\":%llu,\"errors\":%llu,"
           "\"sub_failed\":%llu,\"span_s\":%.4f,\"lat_n\":%llu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,"
           "\"max_ms\":%.3f,\"mean_ms\":%.3f,\"close_1012\":%llu,\"close_4008\":%llu}\n",
           (unsigned long long)events, (unsigned long long)frames,
           (unsigned long long)subscribed_n, (unsigned long long)closed_n,
           (unsigned long long)errors_n, (unsigned long long)sub_failed_n, span, (unsigned long long)lat_n, pv[0], pv[1], pv[2],
           lat_max * 1000, lat_n ? lat_sum / lat_n * 1000 : 0,
           (unsigned long long)close_codes[1012], (unsigned long long)close_codes[4008]);
    fflush(stdout);
    return 0;
}
