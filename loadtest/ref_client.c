/*
 * ref_client: a minimal C epoll client, to check that the Python tools are not the limit.
 *
 * Same load as `python -m loadtest.flood --items N --duration S` against a plain cache:
 * half of the connections `set q 0 0 64` a 64-byte value, the other half `get q`, each with
 * one request in flight; prints the combined rate. Run it in the same sitting as flood
 * (same server, same pinning) and compare:
 *
 *   gcc -O2 -o /tmp/ref_client loadtest/ref_client.c
 *   taskset -c 1 /tmp/ref_client PORT CONNECTIONS SECONDS
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT CONNECTIONS SECONDS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]);
    double seconds = atof(argv[3]);
    char set_req[128], body[65];
    memset(body, 'x', 64);
    body[64] = 0;
    int set_len = snprintf(set_req, sizeof set_req, "set q 0 0 64\r\n%s\r\n", body);
    const char *get_req = "get q\r\n";
    int get_len = (int)strlen(get_req);
    int ep = epoll_create1(0);
    int *fds = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(s, (struct sockaddr *)&a, sizeof a)) {
            perror("connect");
            return 1;
        }
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(s, F_SETFL, O_NONBLOCK);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &e);
        fds[i] = s;
    }
    for (int i = 0; i < n; i++)
        send(fds[i], i % 2 ? get_req : set_req, i % 2 ? get_len : set_len, 0);
    long ops = 0;
    double start = now(), end = start + seconds;
    char buf[65536];
    struct epoll_event events[1024];
    while (now() < end) {
        int k = epoll_wait(ep, events, 1024, 100);
        for (int j = 0; j < k; j++) {
            int i = (int)events[j].data.u32;
            if (recv(fds[i], buf, sizeof buf, 0) <= 0) {
                fprintf(stderr, "connection %d closed\n", i);
                return 1;
            }
            ops++;  /* one reply per read: true for these small replies on loopback */
            send(fds[i], i % 2 ? get_req : set_req, i % 2 ? get_len : set_len, 0);
        }
    }
    printf("%.0f ops/s\n", ops / (now() - start));
    return 0;
}
