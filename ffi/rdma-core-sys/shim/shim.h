/* Non-inline entry points for the verbs that rdma-core defines as static inline
 * functions or macros in <infiniband/verbs.h>: bindgen cannot bind those, so Rust
 * calls these instead. Each is a direct pass-through. */
#ifndef NICPROXY_RDMA_SHIM_H
#define NICPROXY_RDMA_SHIM_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

int nicproxy_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr,
                           struct ibv_send_wr **bad_wr);
int nicproxy_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
                           struct ibv_recv_wr **bad_wr);
int nicproxy_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);
int nicproxy_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only);
/* The exported ibv_query_port symbol takes the old, shorter port_attr layout; the
 * macro in verbs.h routes to the provider's query_port with the full layout. */
int nicproxy_ibv_query_port(struct ibv_context *context, uint8_t port_num,
                            struct ibv_port_attr *port_attr);

#endif
