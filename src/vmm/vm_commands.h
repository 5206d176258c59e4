/*
 * The VM's own control commands: query-status, stop, cont, quit,
 * query-vcpus, query-memory, query-workload and dump-guest-memory
 * (docs/control.md describes each).  The control server knows none of
 * them; the VM registers them like migration registers its own.
 */
#ifndef VMFERRY_VMM_VM_COMMANDS_H
#define VMFERRY_VMM_VM_COMMANDS_H

struct vm;
struct control_server;

/*
 * Register the VM's commands on @srv; their handlers run on the control
 * thread and call the vm_* functions that allow it (see vm.h).  @vm must
 * outlive @srv.  0, or the first control_server_register() error.  Main
 * thread, before control_server_start().
 */
int vm_register_commands(struct vm *vm, struct control_server *srv);

#endif
