/* engage: socket helpers shared by the HTTP servers (admin endpoint, mock API). */
#ifndef ENG_NET_H
#define ENG_NET_H

#include <stdint.h>

/* The local port a bound socket listens on (IPv4 or IPv6), or 0. */
uint16_t eng_net_bound_port(int fd);

#endif
