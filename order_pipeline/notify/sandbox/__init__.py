"""Loopback stand-ins for Aliyun SMS and Tencent Cloud SMS, for the tests, the benchmarks and the demo.

Each holds one set of credentials, recomputes the request's signature the way the vendor does (with code of
its own, not the client's signer) and refuses a wrong one, a stale clock or a bad number in the vendor's own
answer shape; it records what it accepted and can be told to answer flow control or a blacklist for chosen
numbers.
"""
