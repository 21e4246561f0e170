"""Script runs behind docs/rl_toolbox.md's "Notebook 11" section (issue 18, items 1 and 5): too slow for a notebook.

    python scripts/rl_toolbox_runs.py reinforce_pp SEED   # GRPO (beta 0.04) vs REINFORCE++, 80 steps x 16 x 8, lr 1e-4
    python scripts/rl_toolbox_runs.py passk SEED          # GRPO (beta 0) vs pass@k training (k 4), + pass@k on 64 test prompts

From arith-sft with the trace reward, one torch thread; prints one JSON line per run and a FINAL line with the paired
bootstraps over the 500 test chains (and the 64 pass@k prompts). About 80-100 s of CPU per job.
"""
import time, sys, json, statistics, torch
torch.set_num_threads(1)
from minirlhf.models import load_model, load_tokenizer
from minirlhf.zoo import load_split
from minirlhf.evaluate import eval_arithmetic
from minirlhf.worlds.arithmetic import arithmetic_trace_reward
from minirlhf.grpo import preset, train_grpo, pass_at_k
from minirlhf.lm import generate
from minirlhf.stats import paired_bootstrap
if len(sys.argv) != 3 or sys.argv[1] not in ("reinforce_pp", "passk") or not sys.argv[2].isdigit():
    sys.exit("usage: python scripts/rl_toolbox_runs.py reinforce_pp|passk SEED")
job=sys.argv[1]; seed=int(sys.argv[2])
tok=load_tokenizer()
train=[r["prompt"] for r in load_split("arithmetic","train")]
test=load_split("arithmetic","test")
def pp(m):
    res=[r for _,_,r in eval_arithmetic(m,tok,test,return_samples=True)["samples"]]
    return [float(r.answer_correct) for r in res],[float(r.trace_correct) for r in res]
def passk(m, n=32, K=(1,4,16,32)):
    prompts=[r["prompt"] for r in test[:64]]; rep=[p for p in prompts for _ in range(n)]
    comp,_=generate(m,tok,rep,64,1.0,generator=torch.Generator().manual_seed(123+seed))
    corr=arithmetic_trace_reward(rep,comp); c=[int(sum(corr[i*n:(i+1)*n])) for i in range(64)]
    return {k:[pass_at_k(n,ci,k) for ci in c] for k in K}
sa,st=pp(load_model("arith-sft"))
out={"job":job,"seed":seed,"sft_trace":statistics.mean(st)}
runs={"reinforce_pp":[("grpo",dict(beta=0.04)),("reinforce_pp",dict())],"passk":[("grpo",dict(beta=0.0)),("pass_at_k",dict(beta=0.0))]}[job]
res={}
for v,kw in runs:
    m=load_model("arith-sft"); c=time.process_time()
    train_grpo(m,tok,train,[arithmetic_trace_reward],preset(v,lr=1e-4,warmup_steps=10,mu=1,steps=80,eval_every=0,seed=seed,**kw))
    a,t=pp(m); res[v]=(a,t,m)
    out[v]={"trace":statistics.mean(t),"answer":statistics.mean(a),"gain":str(paired_bootstrap(t,st)),"cpu":time.process_time()-c}
    print(json.dumps(out),flush=True)
(v1,(a1,t1,m1)),(v2,(a2,t2,m2))=res.items()
out["diff_trace_%s_minus_%s"%(v2,v1)]=str(paired_bootstrap(t2,t1))
if job=="passk":
    P={"sft":passk(load_model("arith-sft")),v1:passk(m1),v2:passk(m2)}
    out["passk"]={w:{k:statistics.mean(x) for k,x in d.items()} for w,d in P.items()}
    for k in (1,16): out[f"pass{k}_{v2}_minus_{v1}"]=str(paired_bootstrap(P[v2][k],P[v1][k]))
print("FINAL",json.dumps(out),flush=True)
