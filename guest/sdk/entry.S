/*
 * Guest entry.  The VMM starts every vCPU here at CPL3 in long mode with
 * RSP at the top of its own stack, RDI = vCPU index, RSI = boot info.
 * The first instruction reads the clock port, so the VMM sees the guest's
 * first instruction as its first exit.
 */
	.section .text.entry, "ax"
	.global _start
_start:
	mov	$0x504, %dx
	in	%dx, %eax
	and	$-16, %rsp
	call	vmf_main_entry
	/* vmf_main_entry never returns; if it did, report a panic. */
	mov	$0x510, %dx
	mov	$0xdead, %eax
	out	%eax, %dx
1:	jmp	1b
	.section .note.GNU-stack,"",@progbits
