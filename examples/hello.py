"""A sandbox doing real work: run code, stream output, move files, run a server."""

from corral import Sandbox

with Sandbox.create() as sbx:
    print(f"sandbox {sbx.id} is up")

    r = sbx.commands.run("python3 -c 'print(6*7)'")
    sbx.files.write("/home/user/a.txt", "hi")
    print("python says:", r.stdout.strip(), "| file says:", sbx.files.read("/home/user/a.txt"))

    sbx.files.write(
        "/home/user/primes.py",
        "import sys\n"
        "n = int(sys.argv[1])\n"
        "sieve = [True] * n\n"
        "for i in range(2, n):\n"
        "    if sieve[i]:\n"
        "        print(i, flush=True)\n"
        "        for j in range(i * i, n, i):\n"
        "            sieve[j] = False\n",
    )
    streamed: list[str] = []
    sbx.commands.run("python3 primes.py 50", cwd="/home/user", on_stdout=streamed.append)
    print("primes below 50, streamed:", " ".join("".join(streamed).split()))

    print("whoami:", sbx.commands.run("whoami").stdout.strip(), "| as root:", end=" ")
    print(sbx.commands.run("whoami", user="root").stdout.strip())
    print("git:", sbx.commands.run("git --version").stdout.strip())
    print("files in /home/user:", [e.name for e in sbx.files.list("/home/user")])
print("sandbox killed; bye")
