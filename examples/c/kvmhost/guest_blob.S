/* guest_blob.S - embed the assembled guest program (guest.bin) in the host. */
        .section .rodata
        .globl  guest_bin
        .globl  guest_bin_end
        .balign 16
guest_bin:
        .incbin "guest.bin"
guest_bin_end:
        .section .note.GNU-stack,"",@progbits
