"""Sensitive-word folding, matching, masking, stream guarding and PII detection."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from apps.audit.filtering.matcher import Match, StreamGuard, WordMatcher, mask
from apps.audit.filtering.normalize import normalize
from apps.audit.filtering.pii import (
    PiiKind,
    find_bank_cards,
    find_emails,
    find_mobiles,
    find_pii,
    find_resident_ids,
    is_valid_resident_id,
    luhn_valid,
)

# Normal HR/IT chat, written for this test. It deliberately contains near misses:
# English words with a listed word inside ("class", "assessment", "Massachusetts",
# "shitake"), numbers that are not personal data, and traditional characters.
BENIGN_ZH = """\
各位同事好，本周五下午三点在三楼大会议室召开季度总结会，请准时参加。
新员工入职第一天请携带身份证原件、学历证书和银行卡复印件到人力资源部报到。
年度体检安排在下个月中旬，具体时间以行政部通知为准。
请各部门负责人在本月二十五日前提交下季度招聘需求。
公司食堂从下周一起延长营业时间至晚上八点。
办公室空调温度统一设置为二十六度，请大家配合节能。
员工请假超过三天需要部门经理和人力资源部共同审批。
试用期员工的转正申请需在试用期结束前两周提交。
本月绩效考核表已发送到各位邮箱，请于周三前完成自评。
培训中心下周开设项目管理基础课程，欢迎报名。
年假未休完的部分可以顺延至次年第一季度。
出差报销需附上发票原件和行程单，财务部每周二、周四集中处理。
社保和公积金的缴纳基数将于七月统一调整。
如需开具在职证明或收入证明，请在系统中提交申请。
春节放假安排：除夕至初六休息，初七正常上班。
请大家注意保管好个人物品，下班前关闭电脑和显示器。
下周三上午九点进行消防演练，届时请按照疏散路线有序撤离。
新办公楼的门禁卡已经制作完成，请到前台领取。
员工手册已更新，主要修改了考勤和加班相关条款。
本季度优秀员工评选开始，请各团队推荐候选人。
团队建设活动定于下月第一个周六，地点在郊外的农家乐。
关于调整弹性工作时间的通知，请大家仔细阅读并反馈意见。
实习生的实习证明由所在部门负责人签字后交人力资源部盖章。
离职员工请在最后工作日前完成工作交接和资产归还。
公司将为符合条件的员工提供补充医疗保险。
下半年的晋升评审会在九月底举行。
请各位经理在系统中确认团队成员的考勤数据。
新版薪资条将通过企业微信推送，请注意查收。
年终奖发放时间预计在春节前一周。
为提升跨部门协作效率，每周一上午召开简短的同步会。
本次内部调岗的岗位说明已经发布在公告栏。
请新入职的同事尽快完成信息安全培训和考试。
办公用品申领请在每月第一周通过行政系统提交。
公司班车路线有调整，新的时刻表见附件。
欢迎市场部的新同事加入，请大家多多关照。
面试安排已经同步到各位面试官的日历中。
候选人背景调查需在发放录用通知前完成。
劳动合同续签工作将在合同到期前一个月启动。
请在周五前提交本周工作周报。
部门预算执行情况将在月度经营会上通报。
季度目标完成率达到百分之九十五，感谢大家的努力。
下周起会议室预订统一使用新的预约系统。
疫苗接种信息收集表请于本周内填写完毕。
员工生日会每月举办一次，本月共有十二位寿星。
如对薪酬有疑问，请直接联系人力资源业务伙伴。
请大家在外出拜访客户时注意遵守公司着装规范。
外籍员工的工作许可续办材料请提前准备。
本月起加班需提前在系统中申请，事后补录不再受理。
人才发展计划的第一期学员名单已经确定。
导师制度将覆盖所有入职不满一年的员工。
新员工培训第二天的内容是公司文化和业务介绍。
请各位同事积极参与员工满意度调查，问卷匿名填写。
因道路施工，园区东门暂时关闭，请从南门进出。
周末值班表已经排好，如需调换请提前沟通。
各团队的年度目标需要与公司战略保持一致。
请在请假系统中选择正确的假期类型，例如年假、病假或事假。
产假和陪产假按照当地规定执行。
年度调薪方案已经管理层审批通过。
下周有两场校园招聘宣讲会，需要志愿者协助。
关于规范差旅住宿标准的通知已经下发。
行政部提醒：饮水机滤芯已更换，可以放心饮用。
打印机卡纸时请联系行政部，不要自行拆卸。
请在月底前完成个人所得税专项附加扣除信息的确认。
员工推荐奖励政策已更新，成功推荐可获得奖金。
组织架构调整后，各团队的汇报关系请以系统为准。
感谢大家在项目冲刺阶段的辛苦付出。
本次培训的课件和录像已上传到知识库。
如遇紧急情况，请拨打前台分机或联系安保人员。
新的休息区已经开放，欢迎大家使用。
请各部门提交下一年度的培训计划。
服务器将于今晚十点至十二点进行例行维护，期间系统暂停访问。
请所有同事在本周内更新操作系统安全补丁。
邮箱容量即将达到上限，请及时清理不需要的邮件。
新版客户关系管理系统已上线，使用手册见共享盘。
如忘记域账号密码，可以通过自助门户重置。
请不要在工作电脑上安装未经授权的软件。
办公网络将在周六凌晨切换到新的核心交换机。
远程办公请使用公司提供的安全接入客户端。
数据库备份策略调整为每日全量加每小时增量。
请开发团队在合并代码前完成代码评审。
测试环境的数据每周日凌晨自动重置。
生产环境的变更需要提前提交变更申请并通过评审。
监控系统发现接口响应时间变长，正在排查原因。
本次故障的根本原因是配置文件中的超时时间设置过短。
请运维同事在发布前确认回滚方案。
新的持续集成流水线会在每次提交后自动运行单元测试。
容器镜像仓库已迁移，请更新拉取地址。
接口文档已经更新到最新版本，请前端同事同步修改。
日志平台的保留期限调整为九十天。
请在工单系统中记录问题的复现步骤和影响范围。
会议室的投影仪已经更换为无线投屏设备。
笔记本电脑的硬盘加密需要在本月内完成。
请勿将公司内部文件上传到个人网盘。
访客无线网络和办公网络已经隔离。
新的打印服务器地址已经通过组策略下发。
如果视频会议出现卡顿，请先检查本地网络连接。
请使用公司统一的密码管理工具保存账号信息。
多因素认证将在下月起强制启用。
代码仓库中不要提交任何密钥或证书文件。
项目进度看板每天上午自动更新。
本次版本发布包含十三个功能改进和二十个问题修复。
性能测试报告显示吞吐量提升了百分之三十。
前端页面在低版本浏览器中存在兼容性问题，已安排修复。
数据迁移脚本已经在预发布环境验证通过。
请产品经理在需求评审会前上传原型图。
移动端应用的新版本已提交应用商店审核。
消息队列出现积压，已经临时扩容消费者。
缓存命中率下降的原因是键的过期时间设置不合理。
请在提交缺陷时附上截图和日志。
网络安全周活动期间将进行钓鱼邮件演练。
收到可疑邮件请不要点击链接，直接转发给安全团队。
硬件资产盘点将在下周进行，请确保设备贴有资产标签。
旧电脑回收前会由信息技术部统一擦除数据。
内部知识库新增了常见问题解答栏目。
请各位同事及时更新企业微信客户端到最新版本。
智能助手现在可以回答考勤、报销和请假相关问题。
如需开通新系统权限，请提交权限申请并由主管审批。
权限复核工作每季度进行一次。
接口限流策略调整后，高峰期错误率明显下降。
本周的技术分享主题是分布式系统的一致性。
请后端团队评估数据库索引对写入性能的影响。
代码覆盖率目标设定为百分之八十。
新的设计规范已经发布，请设计师统一使用新的组件库。
客户反馈的登录问题已经在今天上午修复。
服务等级协议要求核心系统可用性达到百分之九十九点九。
灾备演练计划在下季度第一个月进行。
请在离开座位时锁定电脑屏幕。
公司正在评估新的协同办公平台。
所有外包人员的账号将在合同结束当天停用。
采购申请需要附上三家供应商的报价。
合同审批流程已经迁移到线上系统。
请法务部审核新版用户协议的条款。
财务系统将在月底结账期间暂停部分功能。
费用报销的审批时限缩短为五个工作日。
差旅标准中一线城市的住宿上限有所上调。
请在出行前通过差旅平台预订机票和酒店。
部门团建费用按照人均标准预算执行。
供应商准入需要完成资质审核。
本月客服中心的满意度评分为四点八分。
销售团队本季度新签客户三十二家。
市场活动的物料需要提前两周提交设计需求。
品牌部提醒对外发布的内容需经过审核。
新产品发布会的邀请函已经发出。
请客户成功团队跟进续约客户的使用情况。
研发中心将搬迁到新园区的五号楼。
行政部已为加班同事准备了夜宵。
园区健身房开放时间为早七点到晚十点。
员工停车位重新分配，结果已公示。
下雨天请注意走廊地面湿滑。
新的访客登记系统需要提前一天录入访客信息。
快递统一送到一楼收发室，请凭取件码领取。
图书角新到了一批技术和管理类书籍。
本月读书会分享的书是关于团队协作的。
请大家节约用纸，尽量使用电子文档。
垃圾分类投放点设在每层茶水间旁边。
会议结束后请把椅子归位并关闭灯光。
公司年会节目报名截止到下周五。
感谢行政团队组织了一场精彩的中秋活动。
年度述职报告模板已放在共享盘的人力资源目录下。
招聘网站上的职位描述需要每月更新一次。
面试评价请在面试结束后二十四小时内提交。
校招生的培养方案包括轮岗和导师辅导。
请各位主管关注团队成员的工作负荷。
心理健康热线全天候为员工提供咨询服务。
工会将为员工子女举办暑期夏令营。
节日福利的领取方式将另行通知。
员工持股计划的说明会安排在下周二。
请同事们在系统中核对自己的紧急联系人信息。
部门之间的资源协调请通过项目管理办公室进行。
各项目组请在周会上汇报风险和阻塞问题。
质量管理体系内审将在下月开展。
请各部门配合完成年度审计资料的准备。
信息安全等级保护测评工作已经启动。
个人信息保护培训是所有员工的必修课。
处理客户数据时请遵守最小必要原则。
对外提供数据前必须经过数据安全评估。
敏感文件请存放在加密目录中。
会议纪要请在会后一天内发送给所有参会人。
请确认下周的排班表是否有冲突。
系统升级后如发现异常，请及时反馈给技术支持。
机房温度告警已经处理，空调恢复正常运行。
新采购的服务器已经上架并完成初始化。
域名证书将在下月到期，请提前续期。
对象存储的访问权限已经收紧，只允许内网访问。
数据分析平台新增了自助报表功能。
请不要在群聊中发送客户的联系方式和身份信息。
本群仅用于项目沟通，请勿发布无关内容。
大家辛苦了，今天的发布非常顺利。
请问报销单提交后多久可以到账？
一般在审批通过后三个工作日内到账。
我想了解一下年假还剩多少天，在哪里查看？
可以在人力资源系统的假期余额页面查看。
请问加班调休需要提前多久申请？
调休需要至少提前一天在系统中申请。
新员工的电脑什么时候能领取？
入职当天上午由信息技术部统一发放。
会议室的视频设备怎么连接？
使用桌上的投屏按钮，按提示配对即可。
公积金提取需要准备哪些材料？
请参考员工服务中心发布的办事指南。
请问今天食堂有什么菜？
今天中午有红烧肉、清蒸鱼和时令蔬菜。
谢谢，辛苦了！
不客气，有问题随时联系。
臺灣分公司的同事下週會來總部交流，請大家熱情接待。
請於本週五前完成線上課程的學習與測驗。
報銷流程已經簡化，審批時間縮短為三個工作日。
資訊部提醒：請定期更新密碼並開啟雙重驗證。
ＩＴ服务台电话已更新，请使用新的分机号码。
请在ＯＡ系统中查看最新的组织架构图。
本次会议使用腾讯会议，会议号已发到群里。
（注意）系统维护期间，报表数据可能延迟更新。
【通知】下周一起实行新的考勤规则。
“员工之家”栏目每周更新一次。
版本号：v3.2.1，发布日期：2024年6月18日。
工单号 2024061800123 已处理完成。
测试服务器地址为 10.0.3.15，端口 8443。
请拨打分机 8021 联系前台。
会议时间调整为 14:30 至 16:00。
预算金额为 128,500.00 元，请审核。
本次共有 356 人参加了线上培训。
订单编号 20240618-000321 已发货。
房间号 1208，楼层 12 层。
员工编号 E10086 的账号已恢复。
今年的营收增长率为 12.5%。
请在 2024-07-01 之前完成年度体检预约。
系统负载在高峰期达到 85%。
"""

BENIGN_EN = """\
Welcome to the team! Your onboarding schedule is attached to this message.
Please submit your timesheet by Friday at 5 pm.
The quarterly all-hands meeting will take place in the main auditorium.
Remember to complete the mandatory security awareness training this month.
Our benefits enrollment window opens on Monday and closes in two weeks.
The class assignment for the leadership program is due next Tuesday.
Please assess the candidates using the structured interview scorecard.
Passwords must be at least twelve characters long and rotated every ninety days.
The assessment center will run from nine to noon.
We passed the compliance audit with no major findings.
Massachusetts and Texas offices will follow their local holiday calendars.
The cafeteria is serving shiitake mushroom soup today.
Please classify documents as public, internal, or confidential.
The VPN client will be upgraded over the weekend.
Our helpdesk can reset your password if you get locked out.
The new expense policy clarifies which meals are reimbursable.
Managers should approve leave requests within two business days.
The performance review cycle starts on the first of October.
Please update your emergency contact details in the HR portal.
Remote employees can request a monitor and keyboard through the IT catalog.
The production deployment is scheduled for Thursday night.
We rolled back the release after the smoke tests failed.
The root cause was an expired TLS certificate on the load balancer.
Please attach logs and screenshots when you open a ticket.
Database maintenance will cause a short outage on Sunday morning.
The build pipeline now runs unit tests and static analysis on every commit.
Code reviews should focus on correctness, readability, and tests.
Please do not share customer data in public channels.
The intern cohort will present their projects at the end of August.
Our mentoring program pairs new hires with experienced colleagues.
Parental leave is now sixteen weeks for all primary caregivers.
The wellness stipend can be used for gym memberships or fitness classes.
Travel must be booked through the corporate travel platform.
Hotel rates above the city cap need director approval.
The finance team closes the books on the third business day of each month.
Invoices should be sent to the accounts payable mailbox.
Purchase orders over the threshold need three vendor quotes.
The legal team is reviewing the updated data processing agreement.
All contractors must sign the confidentiality agreement before starting.
Access reviews are performed every quarter by system owners.
Multi-factor authentication is mandatory for all remote access.
Please lock your screen when you leave your desk.
Phishing simulations will run during cybersecurity awareness month.
Report suspicious emails using the button in your mail client.
The office will be closed on public holidays.
Fire drills happen twice a year; please follow the evacuation routes.
Visitor badges must be returned at reception.
The new coffee machine on the fourth floor is now working.
Parking permits for the new garage are available from facilities.
Bike storage is located next to the east entrance.
Our engineering blog post about caching strategies is live.
The mobile app release passed the store review yesterday.
Latency on the search API improved by thirty percent after the index change.
The message queue backlog was cleared after we added consumers.
Please migrate your scripts to the new artifact repository URL.
The monitoring dashboard shows CPU usage spikes at midnight.
We are hiring senior backend engineers and data analysts.
Interview feedback should be submitted within one day.
Background checks are completed before an offer is extended.
Salary bands are reviewed annually against market data.
The annual bonus will be paid with the March payroll.
Employees can enroll in the stock purchase plan twice a year.
The learning platform offers courses on project management and negotiation.
Our diversity and inclusion council meets monthly.
The employee handbook has been updated with the new attendance rules.
Please confirm your attendance for the holiday party by Friday.
The team offsite will be held at a lakeside resort.
Thanks to everyone who helped with the migration last weekend.
Great job on the launch, everyone!
Can you share the meeting notes with the rest of the team?
Sure, I will send them after lunch.
Where can I find the template for the quarterly business review?
It is in the shared drive under Finance, Templates.
How many vacation days do I have left this year?
You can check your balance in the HR self-service portal.
Is the office open on Saturday?
Only the lobby is open; badge access is required.
My laptop battery is swelling, what should I do?
Stop using it and bring it to the IT service desk right away.
The printer on the third floor is out of toner.
Facilities will replace the toner cartridge this afternoon.
Who approves access to the analytics workspace?
The data platform team owns that approval.
The server room temperature alarm was a false positive.
We decommissioned the legacy reporting server yesterday.
Please use the approved password manager for shared credentials.
Do not commit secrets or private keys to the repository.
Sensitive documents must be stored in encrypted folders.
Customer support satisfaction reached 4.8 out of 5 this month.
The sales team signed thirty-two new accounts this quarter.
The marketing campaign assets are due two weeks before launch.
Please route press inquiries to the communications team.
Quarterly targets were exceeded by five percent.
Our SLA requires 99.9 percent availability for core services.
Disaster recovery testing is planned for next quarter.
Build 2024.06.18-1532 has been promoted to staging.
The ticket INC0012345 was resolved by the network team.
The test server is at 10.0.3.15 on port 8443.
Call extension 8021 to reach the front desk.
The budget request is 128,500.00 USD for the fiscal year.
Version 3.2.1 fixes 20 bugs and adds 13 improvements.
Order 20240618-000321 shipped this morning.
The meeting moved to 14:30-16:00 in room 1208.
Employee ID E10086 has been reactivated.
The survey had a 76% response rate.
Please reply by 2024-07-01 with your preferred dates.
Assistant managers will cover the weekend shifts.
The passage on page 12 explains the escalation process.
Our bass guitarist is performing at the company talent show.
The embassy requires a visa appointment before travel.
Classic rock was the theme of this year's party.
We assessed the risk as low after the review.
The harassment prevention training is mandatory for managers.
The classroom on the second floor has a new projector.
The mass email to customers went out at 9 am.
Please pass the agenda to everyone on the distribution list.
The compass icon opens the navigation menu in the app.
Glass doors on the fifth floor are being replaced.
Some people spell it shitake, but shiitake is correct.
"""

BENIGN_LINES = [line for line in (BENIGN_ZH + BENIGN_EN).splitlines() if line.strip()]

REAL_WORDS = {
    "fraud": ["代开发票", "洗钱", "套现", "刷单", "内幕交易"],
    "gambling": ["赌博", "网络赌场", "六合彩"],
    "drugs": ["冰毒", "海洛因"],
    "weapons": ["枪支弹药", "仿真枪"],
    "porn": ["裸聊", "Porn"],
    "abuse": ["fuck", "shit", "ass", "傻逼"],
}

# Frequent characters of the corpus above, so generated words look like real Chinese.
COMMON_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
    "同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自"
    "二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日"
    "那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
    "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总"
    "次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指"
    "几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器"
    "压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安"
    "场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集"
    "温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连"
    "断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精"
    "值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属"
    "圆包火住调满县局照参红细引听该铁价严龙飞"
)


def generated_words(count: int = 5000, seed: int = 11643) -> list[str]:
    """A large list shaped like real ones: rare CJK, common-character phrases, ASCII."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < count:
        kind = rng.random()
        if kind < 0.5:
            words.add("".join(chr(rng.randint(0x3400, 0x4DBF)) for _ in range(rng.randint(2, 3))))
        elif kind < 0.8:
            words.add("".join(rng.choice(COMMON_CHARS) for _ in range(rng.randint(4, 5))))
        else:
            letters = "abcdefghijklmnopqrstuvwxyz"
            words.add("".join(rng.choice(letters) for _ in range(rng.randint(7, 10))))
    return sorted(words)


@pytest.fixture(scope="module")
def matcher() -> WordMatcher:
    return WordMatcher.from_lists(REAL_WORDS)


@pytest.fixture(scope="module")
def big_matcher() -> WordMatcher:
    return WordMatcher.from_lists({**REAL_WORDS, "generated": generated_words()})


def words(matches: list[Match]) -> list[str]:
    return [m.word for m in matches]


# ---- normalize -------------------------------------------------------------------------


def test_normalize_folds_width_case_script_and_drops_symbols() -> None:
    folded, index_map = normalize("Ａｂ　臺灣，ﬁ!")
    assert folded == "ab台湾fi"
    assert index_map == [0, 1, 3, 4, 6, 6]


def test_normalize_is_piecewise_so_streams_can_fold_incrementally() -> None:
    text = BENIGN_ZH[:300] + "Ｆ.ｕ ｃ-ｋ 代 開-發*票"
    whole, whole_map = normalize(text)
    for cut in range(len(text)):
        left, left_map = normalize(text[:cut])
        right, right_map = normalize(text[cut:])
        assert left + right == whole
        assert left_map + [i + cut for i in right_map] == whole_map


# ---- WordMatcher -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("请帮我代开发票", ["代开发票"]),  # plain
        ("请帮我代開發票", ["代开发票"]),  # traditional
        ("代　开＊发 票", ["代开发票"]),  # ideographic space, full-width asterisk, space
        ("代\u200b开\u00ad发\u200d票", ["代开发票"]),  # zero-width and soft-hyphen characters
        ("代😀开🙂发票", ["代开发票"]),  # emoji in between
        ("代\n开\t发—票", ["代开发票"]),  # line breaks, tab, em dash
        ("ＦＵＣＫ this", ["fuck"]),  # full-width upper case
        ("what the F.u.C.k", ["fuck"]),  # case and dots
        ("f u c k!", ["fuck"]),  # spaced letters
        ("you ass!", ["ass"]),  # standalone ASCII word
        ("网络賭場和六合彩", ["网络赌场", "六合彩"]),  # two words, traditional
        ("洗錢、套現、刷單", ["洗钱", "套现", "刷单"]),
        ("PORN site", ["Porn"]),  # listed with capitals, found in any case
    ],
)
def test_variants_are_caught(matcher: WordMatcher, text: str, expected: list[str]) -> None:
    assert words(matcher.find(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "class assignment",
        "Massachusetts office",
        "please assess the shitake risk",
        "代开会，发票明天给你",  # both halves present, but other characters in between
        "洗手间在钱柜旁边",
        "assfoo",  # listed ASCII word glued to more letters
        "123ass",
    ],
)
def test_near_misses_are_not_caught(matcher: WordMatcher, text: str) -> None:
    assert matcher.find(text) == []


def test_benign_corpus_flags_nothing_with_5000_words(big_matcher: WordMatcher) -> None:
    # Given the real words plus 5,000 generated ones, and a few hundred lines of chat
    assert len(big_matcher) == 5000 + sum(len(v) for v in REAL_WORDS.values())
    assert len(BENIGN_LINES) >= 300
    # When every line, and the whole corpus as one text, is checked
    flagged = {line: words(big_matcher.find(line)) for line in BENIGN_LINES}
    # Then nothing is flagged
    assert {line: hits for line, hits in flagged.items() if hits} == {}
    assert big_matcher.find(BENIGN_ZH + BENIGN_EN) == []


def test_generated_words_are_really_matched(big_matcher: WordMatcher) -> None:
    # The benign result above only means something if the big list does match.
    sample = generated_words()[::997]
    text = " / ".join(f"{BENIGN_LINES[i]}{word}" for i, word in enumerate(sample))
    assert words(big_matcher.find(text)) == sample
    assert {m.rule_id for m in big_matcher.find(text)} == {"generated"}


def test_same_word_in_two_lists_reports_both_rules() -> None:
    both = WordMatcher([("赌博", "gambling"), ("賭博", "legacy-list"), ("赌博", "gambling")])
    assert [(m.word, m.rule_id) for m in both.find("禁止赌博")] == [
        ("赌博", "gambling"),
        ("賭博", "legacy-list"),
    ]


def test_word_with_nothing_to_match_is_rejected() -> None:
    with pytest.raises(ValueError, match="no matchable"):
        WordMatcher([("* * *", "broken")])


def test_empty_matcher_finds_nothing() -> None:
    assert WordMatcher([]).find("代开发票") == []


# ---- masking -------------------------------------------------------------------------


def test_mask_hides_the_original_characters_of_each_match(matcher: WordMatcher) -> None:
    text = "请帮我代 開-發*票，谢谢。ＦＵＣＫ！"
    found = matcher.find(text)
    assert [(m.start, m.end) for m in found] == [(3, 10), (14, 18)]
    assert text[3:10] == "代 開-發*票"
    assert mask(text, found) == "请帮我*******，谢谢。****！"


def test_mask_handles_overlaps_and_expanded_characters() -> None:
    overlapping = WordMatcher([("代开发", "x"), ("开发票", "y"), ("fi", "z")])
    text = "请代開發票。ﬁ!"  # "ﬁ" is one character that folds to two
    found = overlapping.find(text)
    assert [(m.word, text[m.start : m.end]) for m in found] == [
        ("代开发", "代開發"),
        ("开发票", "開發票"),
        ("fi", "ﬁ"),
    ]
    assert mask(text, found, char="#") == "请####。#!"
    with pytest.raises(ValueError):
        mask(text, found, char="**")


# ---- StreamGuard -------------------------------------------------------------------------

BLOCKED_STREAM = "您好，关于报销流程的问题：请不要代 開-發*票，这是违规的。谢谢您的理解！"
ASCII_BLOCKED_STREAM = "Thanks for asking. Honestly, that reply was a bit of an ass."


def run_guard(matcher: WordMatcher, pieces: list[str]) -> tuple[str, StreamGuard]:
    guard = StreamGuard(matcher)
    emitted = "".join(guard.feed(piece) for piece in pieces) + guard.finish()
    return emitted, guard


def split_at(text: str, *cuts: int) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("text", [BLOCKED_STREAM, ASCII_BLOCKED_STREAM])
def test_stream_never_emits_a_blocked_word_for_any_split(matcher: WordMatcher, text: str) -> None:
    first = matcher.find(text)[0]
    splits = [[text]]
    splits += [split_at(text, i) for i in range(1, len(text))]
    splits += [split_at(text, i, j) for i in range(1, len(text)) for j in range(i + 1, len(text))]
    splits.append(list(text))  # one character at a time
    for pieces in splits:
        emitted, guard = run_guard(matcher, pieces)
        assert guard.blocked, pieces
        assert guard.match == first
        assert text.startswith(emitted), pieces
        assert len(emitted) <= first.start, pieces


def test_stream_holds_back_only_a_bounded_tail(matcher: WordMatcher) -> None:
    guard = StreamGuard(matcher)
    assert guard.feed("代") == ""  # could be the start of 代开发票
    released = guard.feed("表大家感谢各位同事的支持")
    assert released and "代表大家感谢各位同事的支持".startswith(released)
    assert len("代" + "表大家感谢各位同事的支持") - len(released) <= matcher.max_key_length
    assert released + guard.finish() == "代表大家感谢各位同事的支持"


def test_ascii_word_is_decided_only_when_the_next_character_arrives() -> None:
    # Given a list whose longest word is ASCII, so the undecided tail is as long as it gets
    only_ascii = WordMatcher([("ass", "abuse")])
    for ending, blocked in [("essment.", False), (".", True), ("", True)]:
        # When "ass" arrives at the end of a piece
        emitted, guard = run_guard(only_ascii, ["Please do the ass", ending])
        # Then nothing of it is released before the next character decides
        assert guard.blocked is blocked
        if blocked:
            assert guard.match is not None
            assert emitted == "Please do the "[: guard.match.start]
        else:
            assert emitted == "Please do the assessment."


def test_benign_stream_comes_out_unchanged_for_any_split(big_matcher: WordMatcher) -> None:
    text = "\n".join(BENIGN_LINES[:3] + BENIGN_LINES[-4:])
    for i in range(1, len(text)):
        emitted, guard = run_guard(big_matcher, split_at(text, i))
        assert not guard.blocked
        assert emitted == text
    emitted, guard = run_guard(big_matcher, list(BENIGN_ZH + BENIGN_EN))
    assert emitted == BENIGN_ZH + BENIGN_EN and not guard.blocked


def test_stream_agrees_with_find_on_random_texts(matcher: WordMatcher) -> None:
    # Random mixes of word fragments, variants and separators, cut at random places.
    rng = random.Random(2048)
    tokens = [
        *["代开", "開發", "发票", "發", "票", "代", "赌", "博", "賭博", "网络", "场", "洗", "錢"],
        *["fuck", "FU", "ck", "ass", "as", "s", "essment", "sh", "it", "x", "1", "Ｐｏｒｎ"],
        *[" ", "*", "，", "\u200b", "\n", "😀"],
    ]
    for _ in range(1500):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, 5))) if text else []
        emitted, guard = run_guard(matcher, split_at(text, *cuts))
        found = matcher.find(text)
        assert guard.blocked == bool(found), text
        if found:
            assert text.startswith(emitted) and len(emitted) <= found[0].start, (text, cuts)
        else:
            assert emitted == text


def test_guard_refuses_input_after_finish(matcher: WordMatcher) -> None:
    guard = StreamGuard(matcher)
    guard.feed("你好")
    assert guard.finish() == "你好"
    assert guard.finish() == ""
    with pytest.raises(RuntimeError):
        guard.feed("再见")


# ---- PII -------------------------------------------------------------------------

TODAY = dt.date(2025, 1, 1)


def with_check_char(first17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(first17, weights, strict=True))
    return first17 + "10X98765432"[total % 11]


def with_luhn_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


VALID_ID = "11010519491231002X"  # the worked example of GB 11643, check character X
OTHER_ID = with_check_char("44030619900307123")


def test_resident_id_checksum_date_and_province() -> None:
    assert is_valid_resident_id(VALID_ID, today=TODAY)
    assert is_valid_resident_id(VALID_ID.lower(), today=TODAY)
    assert is_valid_resident_id(OTHER_ID, today=TODAY)
    for wrong in "0123456789X".replace(OTHER_ID[17], ""):
        assert not is_valid_resident_id(OTHER_ID[:17] + wrong, today=TODAY)
    assert not is_valid_resident_id(with_check_char("11010519990230123"), today=TODAY)  # Feb 30
    assert not is_valid_resident_id(with_check_char("11010520300101123"), today=TODAY)  # future
    assert not is_valid_resident_id(with_check_char("99010519900101123"), today=TODAY)  # province
    assert not is_valid_resident_id("12345678901234567", today=TODAY)  # 17 characters


def test_resident_ids_are_found_only_as_whole_numbers() -> None:
    text = f"身份证号：{VALID_ID}，配偶 {OTHER_ID}。"
    assert [m.value for m in find_resident_ids(text, today=TODAY)] == [VALID_ID, OTHER_ID]
    assert find_resident_ids(f"流水号 9{OTHER_ID}", today=TODAY) == []
    assert find_resident_ids(f"hash {OTHER_ID}ab", today=TODAY) == []
    random_18 = "110105199003071235"  # right shape, wrong check character
    assert not is_valid_resident_id(random_18, today=TODAY)
    assert find_resident_ids(f"编号 {random_18}", today=TODAY) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("电话 13800138000", "13800138000"),
        ("手机:+86 138 0013 8000", "+86 138 0013 8000"),
        ("call +86-139-1234-5678 now", "+86-139-1234-5678"),
        ("联系 0086 13912345678", "0086 13912345678"),
        ("86-15012345678", "86-15012345678"),
        ("（19912345678）", "19912345678"),
    ],
)
def test_mobile_numbers_are_found(text: str, value: str) -> None:
    found = find_mobiles(text)
    assert [m.value for m in found] == [value]
    assert text[found[0].start : found[0].end] == value


@pytest.mark.parametrize(
    "text",
    [
        "12800138000",  # no 12x prefix
        "138001380001",  # twelve digits
        "订单号 2013800138000",  # inside a longer digit run
        "1380013800",  # ten digits
        "金额 0.13800138000",  # decimal part
        "id=a13800138000",  # glued to letters
    ],
)
def test_mobile_lookalikes_are_not_found(text: str) -> None:
    assert find_mobiles(text) == []


def test_bank_cards_pass_luhn_in_any_printed_form() -> None:
    card16 = with_luhn_digit("622202123456789")
    card19 = with_luhn_digit("621700000000000000")
    grouped = " ".join(card16[i : i + 4] for i in range(0, 16, 4))
    dashed = "-".join(card19[i : i + 4] for i in range(0, 19, 4))
    text = f"卡号 {card16}，另一张 {grouped}，还有 {dashed}，测试卡 4111 1111 1111 1111"
    assert [m.value for m in find_bank_cards(text)] == [
        card16,
        grouped,
        dashed,
        "4111 1111 1111 1111",
    ]
    assert not luhn_valid(card16[:-1] + str((int(card16[-1]) + 1) % 10))


def test_bank_card_lookalikes_are_not_found() -> None:
    card16 = with_luhn_digit("622202123456789")
    broken = card16[:-1] + str((int(card16[-1]) + 1) % 10)
    assert find_bank_cards(f"卡号 {broken}") == []  # Luhn fails
    assert find_bank_cards("编号 123456789012") == []  # twelve digits
    assert find_bank_cards(f"流水 9{card16}9999") == []  # part of a longer run
    assert find_bank_cards("1 2 3 4 5 6 7 8 9 0 1 2 6") == []  # single digits, not groups
    assert find_bank_cards(f"{card16[:8]} {card16[8:]}") == []  # not a printed card layout


def test_emails() -> None:
    text = "请联系 zhang.san@example.com.cn 或 IT-Help+vpn@corp.example.org。"
    assert [m.value for m in find_emails(text)] == [
        "zhang.san@example.com.cn",
        "IT-Help+vpn@corp.example.org",
    ]
    for bad in ["user@localhost", "a@b", "@example.com", "foo@bar.c", "x@-bad.com"]:
        assert find_emails(bad) == [], bad


def test_find_pii_prefers_the_most_specific_kind_and_masks() -> None:
    luhn_id = next(
        candidate
        for n in range(1000)
        if (candidate := with_check_char(f"11010519900101{n:03d}"))[-1] != "X"
        and luhn_valid(candidate)
    )
    text = f"身份证 {luhn_id} 手机 138-0013-8000 邮箱 hr@example.com"
    found = find_pii(text, today=TODAY)
    assert [m.kind for m in found] == [PiiKind.RESIDENT_ID, PiiKind.MOBILE, PiiKind.EMAIL]
    assert mask(text, found) == ("身份证 " + "*" * 18 + " 手机 " + "*" * 13 + " 邮箱 " + "*" * 14)


def test_benign_corpus_has_no_pii() -> None:
    assert find_pii(BENIGN_ZH + BENIGN_EN, today=TODAY) == []
