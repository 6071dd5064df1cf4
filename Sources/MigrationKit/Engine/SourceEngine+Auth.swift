/// Authenticated streams on the source (StreamAuth): the session key once
/// the destination's nonce is in, and the check of its acknowledgement.
extension SourceEngine {
    /// After the hello: the destination's nonce, then every byte after the
    /// header goes out sealed.
    func beginSealing(header: [UInt8]) throws(MKError) {
        guard let psk = config.authKey else { return }
        guard hooks.hasReturnChannel else {
            throw MKError(.invalid, "an authenticated stream needs a return channel (a socket fd or a read callback): the destination's nonce comes back on it")
        }
        let destNonce = try hooks.awaitNonce(timeoutMs: config.ackTimeoutMs)
        let key = StreamAuth.sessionKey(psk: psk, sourceNonce: config.authNonce, destinationNonce: destNonce, header: header)
        sessionKey = key
        sealer = StreamSealer(sessionKey: key)
    }

    /// On an authenticated stream every acknowledgement, a refusal too, must
    /// carry the tag only the destination holding the session key can make:
    /// a forged "resumed" would have the VMM drop a guest nobody runs, a
    /// forged refusal would have two copies running. Without a valid tag the
    /// answer counts as no answer.
    func checkAckTag(_ reply: AckReply) throws(MKError) {
        guard let key = sessionKey else { return }
        let tag = try hooks.awaitAckTag(timeoutMs: config.ackTimeoutMs)
        guard StreamAuth.equal(tag, StreamAuth.ackTag(sessionKey: key, ack: Ack.encode(reply))) else {
            throw MKError(.auth, "the acknowledgement's tag does not match the session key: not from the destination that loaded the stream")
        }
    }
}
